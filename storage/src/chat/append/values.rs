//! The byte layout of inbox and dedup values.

use hanmadi_proto::ConversationId;

use super::super::keys;
use crate::kv::VERSIONSTAMP_LEN;

pub(super) const DEDUP_STAMP_AT: usize = 17 + 8 + 8;
const DEDUP_VALUE_LEN: usize = DEDUP_STAMP_AT + VERSIONSTAMP_LEN + 2;

fn put_conv(out: &mut Vec<u8>, c: ConversationId) {
    let (kind, a, b) = keys::conv_elems(c);
    out.push(kind as u8);
    out.extend_from_slice(&a.to_be_bytes());
    out.extend_from_slice(&b.to_be_bytes());
}

pub(crate) fn parse_conv(b: &[u8]) -> Option<ConversationId> {
    let a = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    let c = u64::from_be_bytes(b.get(9..17)?.try_into().ok()?);
    match b.first()? {
        0 => Some(ConversationId::Direct {
            user_low: a,
            user_high: c,
        }),
        1 => Some(ConversationId::Group(a)),
        _ => None,
    }
}

/// Inbox values: conversation (17 bytes), message id, sent_at.
pub(crate) fn inbox_value(c: ConversationId, id: u64, sent_at: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    put_conv(&mut v, c);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&sent_at.to_be_bytes());
    v
}

pub(crate) fn parse_inbox_value(v: &[u8]) -> Option<(ConversationId, u64, u64)> {
    let c = parse_conv(v)?;
    let id = u64::from_be_bytes(v.get(17..25)?.try_into().ok()?);
    let sent_at = u64::from_be_bytes(v.get(25..33)?.try_into().ok()?);
    Some((c, id, sent_at))
}

/// Dedup values: the inbox value's fields, then the commit's versionstamp
/// and first inbox order, completed at commit (versionstamped-value format).
pub(super) fn dedup_value(c: ConversationId, id: u64, sent_at: u64, first_order: u16) -> Vec<u8> {
    let mut v = inbox_value(c, id, sent_at);
    v.resize(DEDUP_STAMP_AT + VERSIONSTAMP_LEN, 0);
    v.extend_from_slice(&first_order.to_be_bytes());
    v.extend_from_slice(&(DEDUP_STAMP_AT as u32).to_le_bytes());
    v
}

pub(crate) fn parse_dedup_value(v: &[u8]) -> Option<(ConversationId, u64, u64)> {
    if v.len() != DEDUP_VALUE_LEN {
        return None;
    }
    parse_inbox_value(v)
}
