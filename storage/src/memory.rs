//! An in-memory [`Backend`] that keeps every version of every key, so a
//! snapshot reads exactly the state at the batch it was taken after. The
//! simulated engine runs on it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;

use crate::backend::{Backend, Snapshot, Write};
use crate::kv::{KeyValue, KvError};

#[derive(Debug, Default)]
struct State {
    /// Batches applied so far; a snapshot reads versions up to its own.
    applied: u64,
    /// Every key's history: (batch, value or tombstone), oldest first.
    map: BTreeMap<Bytes, Vec<(u64, Option<Bytes>)>>,
}

/// A multi-version ordered map in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    state: Arc<RwLock<State>>,
}

impl MemoryBackend {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A view of a [`MemoryBackend`] as of one applied batch.
#[derive(Debug)]
pub struct MemorySnapshot {
    state: Arc<RwLock<State>>,
    at: u64,
}

fn visible(history: &[(u64, Option<Bytes>)], at: u64) -> Option<&Bytes> {
    history
        .iter()
        .rev()
        .find(|(v, _)| *v <= at)
        .and_then(|(_, value)| value.as_ref())
}

impl Snapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, KvError> {
        let state = self.state.read();
        Ok(state
            .map
            .get(key)
            .and_then(|h| visible(h, self.at))
            .cloned())
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        if begin >= end {
            return Ok(Vec::new());
        }
        let state = self.state.read();
        let iter = state
            .map
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let pick = |(k, h): (&Bytes, &Vec<(u64, Option<Bytes>)>)| {
            visible(h, self.at).map(|v| KeyValue {
                key: k.clone(),
                value: v.clone(),
            })
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        Ok(if reverse {
            iter.rev().filter_map(pick).take(limit).collect()
        } else {
            iter.filter_map(pick).take(limit).collect()
        })
    }
}

impl Backend for MemoryBackend {
    type Snapshot = MemorySnapshot;

    fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            state: Arc::clone(&self.state),
            at: self.state.read().applied,
        }
    }

    fn apply(&self, writes: &[Write], _sync: bool) -> Result<(), KvError> {
        let mut state = self.state.write();
        state.applied += 1;
        let at = state.applied;
        for w in writes {
            match w {
                Write::Set(k, v) => state
                    .map
                    .entry(k.clone())
                    .or_default()
                    .push((at, Some(v.clone()))),
                Write::Clear(k) => {
                    if let Some(h) = state.map.get_mut(k) {
                        h.push((at, None));
                    }
                }
                Write::ClearRange(b, e) => {
                    for (_, h) in state.map.range_mut::<[u8], _>((
                        Bound::Included(b.as_ref()),
                        Bound::Excluded(e.as_ref()),
                    )) {
                        h.push((at, None));
                    }
                }
            }
        }
        Ok(())
    }
}
