//! The group resolver: checks a group of commits against the writes
//! committed after each one's read version, and applies the survivors to the
//! backend in one atomic batch under one commit version.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use super::atomic::apply_atomic;
use super::conflict::{KeyRange, LazyWriteSet};
use super::txn::{CommitRequest, Pending};
use super::{Core, VERSION_KEY};
use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{KvError, Versionstamp, VERSIONSTAMP_LEN};

impl<B: Backend> Core<B> {
    /// Resolves and applies a group of commits as one backend batch with
    /// `sync` durability. Returns one outcome per commit, in order.
    pub fn commit_group(
        &self,
        group: Vec<CommitRequest>,
        sync: bool,
    ) -> Vec<Result<Versionstamp, KvError>> {
        let _committer = self.commit.lock();
        let mut outcomes: Vec<Result<Versionstamp, KvError>> = Vec::with_capacity(group.len());
        let version = self.resolver.lock().version + 1;
        let now = Instant::now();
        let snapshot = self.backend.snapshot();
        let mut writes: Vec<Write> = Vec::new();
        // Values this group has written so far, kept only when a later
        // member has atomic operations that must see them.
        let mut touched: Option<HashMap<Bytes, Option<Bytes>>> = group
            .iter()
            .skip(1)
            .any(|r| {
                r.muts
                    .keys
                    .values()
                    .any(|p| matches!(p, Pending::Atomic(_)))
            })
            .then(HashMap::new);
        let mut group_cleared: Vec<KeyRange> = Vec::new();
        // Write sets of the members committed so far, sorted only once a
        // later member or a live reader needs to check against them.
        let mut group_sets: Vec<LazyWriteSet> = Vec::new();
        let mut order: u16 = 0;
        let mut read_versions = Vec::with_capacity(group.len());

        for req in group {
            read_versions.extend(req.read_version);
            // A member's writes are staged: a member that fails part-way
            // leaves nothing behind for its group to apply.
            let mark = writes.len();
            match self.resolve_one(
                &req,
                now,
                &snapshot,
                &mut group_sets,
                version,
                order,
                &mut writes,
                touched.as_ref(),
                &group_cleared,
            ) {
                Ok((stamp, staged)) => {
                    for range in &staged.cleared {
                        if let Some(t) = touched.as_mut() {
                            t.retain(|k, _| !range.contains(k));
                        }
                    }
                    group_cleared.extend(staged.cleared);
                    if let Some(t) = touched.as_mut() {
                        t.extend(staged.touched);
                    }
                    group_sets.push(LazyWriteSet::Raw(staged.ranges));
                    order = order.saturating_add(1);
                    outcomes.push(Ok(stamp));
                }
                Err(e) => {
                    writes.truncate(mark);
                    outcomes.push(Err(e));
                }
            }
        }

        let applied = if group_sets.is_empty() {
            false
        } else {
            writes.push(Write::Set(
                Bytes::from_static(VERSION_KEY),
                Bytes::copy_from_slice(&version.to_be_bytes()),
            ));
            match self.backend.apply(&writes, sync) {
                Ok(()) => true,
                Err(e) => {
                    let msg = e.to_string();
                    for o in outcomes.iter_mut().filter(|o| o.is_ok()) {
                        *o = Err(KvError::engine(std::io::Error::other(msg.clone())));
                    }
                    false
                }
            }
        };
        let mut r = self.resolver.lock();
        for rv in read_versions {
            Self::release_locked(&mut r, rv);
        }
        if applied {
            // Only transactions that read before this version can conflict
            // with it; with none alive, its write sets are never needed.
            if r.readers
                .keys()
                .next()
                .is_some_and(|&oldest| oldest < version)
            {
                r.log
                    .extend(group_sets.into_iter().map(|w| w.into_sorted(version)));
            }
            r.version = version;
        }
        Self::prune(&mut r);
        outcomes
    }

    /// Checks one member for conflicts and appends its writes to `writes`.
    /// What it would change in the group's view (values for later atomic
    /// operations, cleared ranges) comes back staged, to be taken only if
    /// the whole member succeeds.
    #[allow(clippy::too_many_arguments)]
    fn resolve_one(
        &self,
        req: &CommitRequest,
        now: Instant,
        snapshot: &B::Snapshot,
        group_sets: &mut [LazyWriteSet],
        version: u64,
        order: u16,
        writes: &mut Vec<Write>,
        touched: Option<&HashMap<Bytes, Option<Bytes>>>,
        group_cleared: &[KeyRange],
    ) -> Result<(Versionstamp, Staged), KvError> {
        if now.duration_since(req.started) > self.limits.max_age {
            return Err(KvError::TransactionTooOld);
        }
        if let Some(rv) = req.read_version {
            let in_log = {
                let r = self.resolver.lock();
                r.log
                    .iter()
                    .filter(|w| w.version > rv)
                    .any(|w| req.read_ranges.iter().any(|rr| w.intersects(rr)))
            };
            let in_group = group_sets.iter_mut().any(|w| {
                let w = w.sorted(version);
                req.read_ranges.iter().any(|rr| w.intersects(rr))
            });
            if in_log || in_group {
                return Err(KvError::Conflict);
            }
        }
        let stamp = Versionstamp::new(version, order);
        let track = touched.is_some();
        let mut staged = Staged {
            ranges: Vec::with_capacity(
                req.muts.keys.len() + req.muts.cleared.len() + req.muts.stamped.len(),
            ),
            cleared: Vec::new(),
            touched: Vec::new(),
        };
        for range in &req.muts.cleared {
            let (Some(end), begin) = (&range.end, &range.begin) else {
                continue;
            };
            writes.push(Write::ClearRange(begin.clone(), end.clone()));
            staged.cleared.push(range.clone());
            staged.ranges.push(range.clone());
        }
        for (key, pending) in &req.muts.keys {
            let value = match pending {
                Pending::Set(v) => Some(v.clone()),
                Pending::Cleared => None,
                // A transaction's atomic operation never lies in a range it
                // cleared itself (clearing drops them, and one after the
                // clear becomes a set), so the group's view before this
                // member is the right base.
                Pending::Atomic(ops) => {
                    let current = match touched.and_then(|t| t.get(key)) {
                        Some(v) => v.clone(),
                        None if group_cleared.iter().any(|r| r.contains(key)) => None,
                        None => snapshot.get(key)?,
                    };
                    let mut v = current;
                    for (op, param) in ops {
                        v = Some(apply_atomic(*op, v.as_deref(), param));
                    }
                    v
                }
            };
            writes.push(match &value {
                Some(v) => Write::Set(key.clone(), v.clone()),
                None => Write::Clear(key.clone()),
            });
            if track {
                staged.touched.push((key.clone(), value));
            }
            staged.ranges.push(KeyRange::point(key.clone()));
        }
        for (raw, value, in_key) in &req.muts.stamped {
            let (key, value) = if *in_key {
                (complete_stamp(raw, &stamp)?, value.clone())
            } else {
                (raw.clone(), complete_stamp(value, &stamp)?)
            };
            writes.push(Write::Set(key.clone(), value.clone()));
            if track {
                staged.touched.push((key.clone(), Some(value)));
            }
            staged.ranges.push(KeyRange::point(key));
        }
        Ok((stamp, staged))
    }
}

/// What a resolved member changes in its group's view, taken only once the
/// whole member has succeeded.
struct Staged {
    /// Its write ranges, for later members and live readers to check.
    ranges: Vec<KeyRange>,
    /// Ranges it cleared.
    cleared: Vec<KeyRange>,
    /// Values it left, when a later member's atomic operations need them.
    touched: Vec<(Bytes, Option<Bytes>)>,
}

/// Fills the 10-byte placeholder of a versionstamped key or value whose last
/// 4 bytes give the placeholder's offset (little-endian), and drops them.
fn complete_stamp(raw: &[u8], stamp: &Versionstamp) -> Result<Bytes, KvError> {
    let Some(body_len) = raw.len().checked_sub(4) else {
        return Err(KvError::InvalidVersionstamp(
            "shorter than its 4-byte offset",
        ));
    };
    let mut off = [0u8; 4];
    off.copy_from_slice(&raw[body_len..]);
    let off = u32::from_le_bytes(off) as usize;
    if off + VERSIONSTAMP_LEN > body_len {
        return Err(KvError::InvalidVersionstamp(
            "placeholder runs past the end",
        ));
    }
    let mut out = raw[..body_len].to_vec();
    out[off..off + VERSIONSTAMP_LEN].copy_from_slice(&stamp.0);
    Ok(Bytes::from(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn complete_stamp_fills_placeholder() {
        let mut raw = b"k".to_vec();
        raw.extend_from_slice(&[0xff; 10]);
        raw.extend_from_slice(b"s");
        raw.extend_from_slice(&1u32.to_le_bytes());
        let stamp = Versionstamp::new(7, 2);
        let out = complete_stamp(&raw, &stamp).unwrap();
        assert_eq!(&out[1..11], &stamp.0);
        assert_eq!(out.len(), 12);
        assert!(complete_stamp(&[1, 0, 0, 0], &stamp).is_err());
    }

    #[test]
    fn a_member_failing_part_way_leaves_no_writes() {
        let core = Core::open(
            crate::memory::MemoryBackend::new(),
            super::super::Limits::default(),
        )
        .unwrap();
        let mut good = core.begin();
        good.set_now(b"b", b"kept");
        let mut bad = core.begin();
        bad.set_now(b"a", b"torn");
        bad.atomic_now(b"n", crate::kv::AtomicOp::Add, &[1]);
        // A versionstamped key too short to hold its offset fails only at
        // resolution, after the member's plain writes were gathered.
        bad.stamped_now(b"xy", b"v", true);
        let mut after = core.begin();
        after.atomic_now(b"n", crate::kv::AtomicOp::Add, &[1]);
        let reqs = [good, bad, after]
            .into_iter()
            .map(|t| t.into_request().unwrap().1)
            .collect();
        let out = core.commit_group(reqs, false);
        assert!(out[0].is_ok());
        assert!(matches!(out[1], Err(KvError::InvalidVersionstamp(_))));
        assert!(out[2].is_ok());
        let snap = core.backend().snapshot();
        assert_eq!(snap.get(b"b").unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(snap.get(b"a").unwrap(), None);
        // The last member's add saw no trace of the failed member's.
        assert_eq!(snap.get(b"n").unwrap().as_deref(), Some(&[1u8][..]));
    }
}
