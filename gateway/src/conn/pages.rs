//! `SyncBatch` and `HistoryPage` answers, built from the stored message
//! bytes and cut to one frame.

use bytes::BytesMut;
use hanmadi_proto::codec::LENGTH_PREFIX_LEN;
use hanmadi_proto::deliver::{put_history_page, put_sync_batch};
use hanmadi_proto::ErrorCode;
use hanmadi_storage::chat::Cursor;

use super::reply::{error_frame, Reply};

/// How many leading items, of these encoded sizes, fit in one frame of
/// `max_frame` bytes with room left for the envelope (`req_id`, `next`,
/// `has_more`); at least one, so every page makes progress.
pub(super) fn frame_fit(max_frame: usize, sizes: impl Iterator<Item = usize>) -> usize {
    let budget = max_frame.saturating_sub(LENGTH_PREFIX_LEN + 64);
    let mut total = 0usize;
    sizes
        .enumerate()
        .take_while(|&(i, size)| {
            total += size;
            i == 0 || total <= budget
        })
        .count()
}

/// A `SyncBatch` that fits in one frame, built from the stored bytes.
pub(super) fn sync_batch(
    req_id: u64,
    batch: &hanmadi_storage::chat::SyncBatch,
    max_frame: usize,
) -> Reply {
    // A `Deliver` entry is its message and cursor plus field keys and
    // lengths: 8 bytes up to 16 KiB; the envelope room absorbs the 2 more
    // of each larger message, as only a few fit in a frame.
    let sizes = batch
        .entries
        .iter()
        .map(|e| e.message.len() + e.cursor.0.len() + 8);
    let fit = frame_fit(max_frame, sizes);
    let cut = fit < batch.entries.len();
    let next = if cut {
        Some(batch.entries[fit - 1].cursor)
    } else {
        batch.next
    };
    let entries = batch.entries[..fit]
        .iter()
        .map(|e| (e.cursor.as_bytes(), e.message.as_ref()));
    let mut out = BytesMut::new();
    let next = next.as_ref().map_or(&[][..], Cursor::as_bytes);
    match put_sync_batch(&mut out, req_id, entries, next, batch.has_more || cut) {
        Ok(()) => Reply::Encoded(out),
        Err(e) => error_frame(req_id, ErrorCode::Internal, e.to_string()).into(),
    }
}

/// A `HistoryPage` that fits in one frame, built from the stored bytes.
pub(super) fn history_page(
    req_id: u64,
    page: &hanmadi_storage::chat::HistoryPage,
    max_frame: usize,
) -> Reply {
    // A repeated message field adds a key and a length of at most 4 bytes.
    let fit = frame_fit(max_frame, page.messages.iter().map(|m| m.len() + 4));
    let cut = fit < page.messages.len();
    let messages = page.messages[..fit].iter().map(|m| m.as_ref());
    let mut out = BytesMut::new();
    match put_history_page(&mut out, req_id, messages, page.has_more || cut) {
        Ok(()) => Reply::Encoded(out),
        Err(e) => error_frame(req_id, ErrorCode::Internal, e.to_string()).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::frame_fit;

    #[test]
    fn pages_keep_at_least_one_item() {
        assert_eq!(frame_fit(1000, [10, 20, 30].into_iter()), 3);
        // 1000 bytes leave 932 after the length prefix and the envelope.
        assert_eq!(frame_fit(1000, [900, 32].into_iter()), 2);
        assert_eq!(frame_fit(1000, [900, 33].into_iter()), 1);
        assert_eq!(frame_fit(1000, [5000, 20].into_iter()), 1);
        assert_eq!(frame_fit(1000, std::iter::empty()), 0);
    }
}
