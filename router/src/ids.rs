//! Message ids (DESIGN §3.3): `[42 bits ms since 2024-01-01][10 bits
//! node][12 bits sequence]`.
//!
//! An id is the smallest value that keeps this node's bits and is greater
//! than the clock's current id, this node's last id and the conversation's
//! last id. A full sequence carries into the milliseconds, never into the
//! node bits; a clock that steps back only slows the milliseconds down until
//! it catches up. So ids are unique across nodes, strictly increase within a
//! conversation in commit order, and sort by time.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hanmadi_storage::chat::IdSource;
use parking_lot::Mutex;

/// Milliseconds from the Unix epoch to 2024-01-01T00:00:00Z.
pub const ID_EPOCH_MS: u64 = 1_704_067_200_000;
/// Bits of the node number.
pub const NODE_BITS: u32 = 10;
/// Bits of the per-millisecond sequence.
pub const SEQUENCE_BITS: u32 = 12;
/// Largest node number.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;
const TIME_SHIFT: u32 = NODE_BITS + SEQUENCE_BITS;

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The parts of an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdParts {
    /// Milliseconds since 2024-01-01.
    pub ms: u64,
    /// The node that made it.
    pub node: u16,
    /// Sequence within the millisecond.
    pub sequence: u16,
}

/// Splits an id into its parts.
pub fn split(id: u64) -> IdParts {
    IdParts {
        ms: id >> TIME_SHIFT,
        node: ((id >> SEQUENCE_BITS) & NODE_MASK) as u16,
        sequence: (id & SEQUENCE_MASK) as u16,
    }
}

/// Builds an id from its parts.
pub fn compose(ms: u64, node: u16, sequence: u16) -> u64 {
    (ms << TIME_SHIFT) | ((u64::from(node) & NODE_MASK) << SEQUENCE_BITS) | u64::from(sequence)
}

/// The smallest id with `node`'s bits that is greater than `floor`.
pub fn next_after(floor: u64, node: u16) -> u64 {
    let p = split(floor);
    if p.node < node {
        compose(p.ms, node, 0)
    } else if p.node == node && u64::from(p.sequence) < SEQUENCE_MASK {
        floor + 1
    } else {
        compose(p.ms + 1, node, 0)
    }
}

/// This node's id generator.
pub struct IdGenerator {
    node: u16,
    clock: Arc<dyn Clock>,
    last: Mutex<u64>,
}

impl std::fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdGenerator")
            .field("node", &self.node)
            .field("last", &*self.last.lock())
            .finish_non_exhaustive()
    }
}

impl IdGenerator {
    /// A generator for node `node` (at most [`MAX_NODE`]) on `clock`.
    ///
    /// # Panics
    ///
    /// When `node` exceeds [`MAX_NODE`]: node numbers come from
    /// configuration or registration, which check them first.
    pub fn new(node: u16, clock: Arc<dyn Clock>) -> Self {
        assert!(node <= MAX_NODE, "node number {node} exceeds {MAX_NODE}");
        Self {
            node,
            clock,
            last: Mutex::new(0),
        }
    }

    /// The node number.
    pub fn node(&self) -> u16 {
        self.node
    }

    /// The next id greater than `floor` (and everything before).
    pub fn next_above(&self, floor: u64) -> u64 {
        let now = self.clock.now_ms().saturating_sub(ID_EPOCH_MS);
        // Anything from this millisecond on is above the clock's id.
        let clock_floor = compose(now, 0, 0).saturating_sub(1);
        let mut last = self.last.lock();
        let id = next_after(floor.max(*last).max(clock_floor), self.node);
        *last = id;
        id
    }
}

impl IdSource for IdGenerator {
    fn next_id(&self, head: u64) -> u64 {
        self.next_above(head)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A clock tests move by hand.
    #[derive(Debug)]
    struct ManualClock(AtomicU64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn generator(node: u16, start: u64) -> (Arc<ManualClock>, IdGenerator) {
        let clock = Arc::new(ManualClock(AtomicU64::new(start)));
        (clock.clone(), IdGenerator::new(node, clock))
    }

    #[test]
    fn ids_carry_sequence_into_milliseconds() {
        let (_, g) = generator(5, ID_EPOCH_MS + 1000);
        let mut last = 0;
        for _ in 0..10_000 {
            let id = g.next_above(0);
            assert!(id > last);
            assert_eq!(split(id).node, 5);
            last = id;
        }
        // 10,000 ids in one frozen millisecond overflowed into later ones.
        assert!(split(last).ms >= 1002);
    }

    #[test]
    fn clock_stepping_back_keeps_ids_increasing() {
        let (clock, g) = generator(7, ID_EPOCH_MS + 50_000);
        let before = g.next_above(0);
        clock.0.store(ID_EPOCH_MS + 40_000, Ordering::Relaxed);
        let after = g.next_above(0);
        assert!(after > before);
        assert_eq!(split(after).node, 7);
        clock.0.store(ID_EPOCH_MS + 60_000, Ordering::Relaxed);
        assert_eq!(split(g.next_above(0)).ms, 60_000);
    }

    #[test]
    fn ids_pass_a_foreign_head_without_touching_node_bits() {
        let (_, g) = generator(3, ID_EPOCH_MS + 10);
        let foreign = compose(500, 900, 4095);
        let id = g.next_above(foreign);
        assert!(id > foreign);
        assert_eq!(split(id).node, 3);
        assert_eq!(split(id).ms, 501);
        let lower_node = compose(500, 1, 17);
        let id2 = g.next_above(lower_node);
        assert!(id2 > id);
    }
}

#[cfg(test)]
mod properties {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug)]
    struct StepClock(AtomicU64);

    impl Clock for StepClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    proptest! {
        /// Whatever the clock does and whatever heads come in, ids from one
        /// node strictly increase, pass their floor and keep the node bits;
        /// ids from two nodes never collide.
        #[test]
        fn ids_increase_and_never_collide(
            steps in proptest::collection::vec((-20_000i64..20_000, 0u64..1 << 40, any::<bool>()), 1..300),
            node_a in 0u16..=MAX_NODE,
            node_b in 0u16..=MAX_NODE,
        ) {
            prop_assume!(node_a != node_b);
            let clock = Arc::new(StepClock(AtomicU64::new(ID_EPOCH_MS + 1_000_000)));
            let a = IdGenerator::new(node_a, clock.clone());
            let b = IdGenerator::new(node_b, clock.clone());
            let (mut last_a, mut last_b) = (0u64, 0u64);
            let mut seen = std::collections::HashSet::new();
            for (dt, floor, use_floor) in steps {
                let now = clock.0.load(Ordering::Relaxed) as i64 + dt;
                clock.0.store(now.max(ID_EPOCH_MS as i64) as u64, Ordering::Relaxed);
                let floor = if use_floor { floor } else { 0 };
                let x = a.next_above(floor);
                let y = b.next_above(floor);
                prop_assert!(x > last_a && x > floor && split(x).node == node_a);
                prop_assert!(y > last_b && y > floor && split(y).node == node_b);
                prop_assert!(seen.insert(x) && seen.insert(y));
                last_a = x;
                last_b = y;
            }
        }
    }
}
