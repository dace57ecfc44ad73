//! Correctness while loading: what was acknowledged, what each device
//! received, and the reckoning of lost, duplicated and reordered
//! deliveries.
//!
//! Message ids grow strictly within a conversation in commit order, so a
//! device that receives a conversation's messages in order sees its ids
//! rise. Each message body names this run and its conversation (see
//! [`Body`]), so deliveries of other runs' messages are ignored.

use std::collections::HashMap;
use std::fmt::Write as _;

use parking_lot::Mutex;
use serde::Serialize;

/// The fixed part of each body: `lt:{run}:{conversation}:{due µs}:`.
pub const BODY_HEADER_MAX: usize = 48;

/// What the tool writes into a message body, and reads back from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    /// This run's id.
    pub run: u32,
    /// The conversation's index in this run.
    pub conversation: u32,
    /// When the send was due, µs since the run's epoch.
    pub due_us: u64,
}

impl Body {
    /// The body text, padded with `.` to `size` bytes.
    pub fn render(&self, size: usize) -> String {
        let mut s = String::with_capacity(size.max(BODY_HEADER_MAX));
        // Writing to a String cannot fail.
        let _ = write!(s, "lt:{}:{}:{}:", self.run, self.conversation, self.due_us);
        while s.len() < size {
            s.push('.');
        }
        s
    }

    /// Reads a body written by [`Body::render`]; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.strip_prefix("lt:")?.splitn(4, ':');
        Some(Self {
            run: parts.next()?.parse().ok()?,
            conversation: parts.next()?.parse().ok()?,
            due_us: parts.next()?.parse().ok()?,
        })
    }
}

/// The acknowledged messages of every conversation.
#[derive(Debug)]
pub struct Acked {
    conversations: Vec<Mutex<Vec<u64>>>,
}

impl Acked {
    /// Room for `conversations` conversations.
    pub fn new(conversations: usize) -> Self {
        Self {
            conversations: (0..conversations).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// `message_id` of `conversation` was acknowledged.
    pub fn push(&self, conversation: u32, message_id: u64) {
        if let Some(c) = self.conversations.get(conversation as usize) {
            c.lock().push(message_id);
        }
    }

    /// The acknowledged ids of each conversation, sorted.
    pub fn into_sorted(self) -> Vec<Vec<u64>> {
        self.conversations
            .into_iter()
            .map(|c| {
                let mut ids = c.into_inner();
                ids.sort_unstable();
                ids.dedup();
                ids
            })
            .collect()
    }
}

/// What one device received, per conversation.
#[derive(Debug, Default)]
pub struct Received {
    conversations: HashMap<u32, Track>,
    /// Deliveries whose id was received before.
    pub duplicated: u64,
    /// Deliveries whose id is below one received before in the same
    /// conversation.
    pub reordered: u64,
}

/// One conversation on one device: ids received, kept sorted.
#[derive(Debug, Default)]
struct Track {
    ids: Vec<u64>,
}

impl Received {
    /// A delivery of `message_id` in `conversation` arrived.
    pub fn record(&mut self, conversation: u32, message_id: u64) {
        let track = self.conversations.entry(conversation).or_default();
        match track.ids.last() {
            None => track.ids.push(message_id),
            Some(&last) if message_id > last => track.ids.push(message_id),
            Some(_) => match track.ids.binary_search(&message_id) {
                Ok(_) => self.duplicated += 1,
                Err(at) => {
                    self.reordered += 1;
                    track.ids.insert(at, message_id);
                }
            },
        }
    }

    /// How many of `expected` (sorted ids of `conversation`) never arrived.
    pub fn missing(&self, conversation: u32, expected: &[u64]) -> u64 {
        let Some(track) = self.conversations.get(&conversation) else {
            return expected.len() as u64;
        };
        let mut got = track.ids.iter().peekable();
        let mut missing = 0;
        for id in expected {
            while got.next_if(|g| *g < id).is_some() {}
            if got.next_if(|g| *g == id).is_none() {
                missing += 1;
            }
        }
        missing
    }
}

/// The reckoning of a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Verdict {
    /// Deliveries the acknowledged messages called for.
    pub expected: u64,
    /// Of those, never received.
    pub lost: u64,
    /// Deliveries of an id the device had already received.
    pub duplicated: u64,
    /// Deliveries that came after a later message of their conversation.
    pub reordered: u64,
}

/// Checks every device against the acknowledged messages of each
/// conversation it is a member of.
pub fn reckon<'a>(
    acked: &[Vec<u64>],
    devices: impl IntoIterator<Item = (&'a Received, &'a [u32])>,
) -> Verdict {
    let mut v = Verdict::default();
    for (received, conversations) in devices {
        v.duplicated += received.duplicated;
        v.reordered += received.reordered;
        for &c in conversations {
            let expected = acked.get(c as usize).map_or(&[][..], Vec::as_slice);
            v.expected += expected.len() as u64;
            v.lost += received.missing(c, expected);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips() {
        let b = Body {
            run: 7,
            conversation: 12,
            due_us: 123_456,
        };
        let text = b.render(100);
        assert_eq!(text.len(), 100);
        assert_eq!(Body::parse(&text), Some(b));
        assert_eq!(Body::parse("hello"), None);
    }

    #[test]
    fn counts_lost_duplicated_and_reordered() {
        let mut r = Received::default();
        for id in [1, 2, 4, 4, 3, 6] {
            r.record(0, id);
        }
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.reordered, 1);
        let acked = vec![vec![1, 2, 3, 4, 5, 6], vec![10]];
        let v = reckon(&acked, [(&r, &[0u32, 1][..])]);
        assert_eq!(v.expected, 7);
        assert_eq!(v.lost, 2, "5 in conversation 0 and 10 in conversation 1");
        assert_eq!(v.duplicated + v.reordered, 2);
    }
}
