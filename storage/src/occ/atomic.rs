//! FoundationDB's atomic operations, applied at commit on the committed
//! value.

use bytes::Bytes;

use crate::kv::AtomicOp;

/// FoundationDB's atomic operations on little-endian integers.
pub(super) fn apply_atomic(op: AtomicOp, current: Option<&[u8]>, param: &[u8]) -> Bytes {
    let n = param.len();
    let Some(cur) = current else {
        return Bytes::copy_from_slice(param);
    };
    // The existing value is truncated or zero-extended to the parameter's
    // length, as FoundationDB does.
    let mut a = vec![0u8; n];
    let m = cur.len().min(n);
    a[..m].copy_from_slice(&cur[..m]);
    match op {
        AtomicOp::Add => {
            let mut carry = 0u16;
            for (x, y) in a.iter_mut().zip(param) {
                let s = u16::from(*x) + u16::from(*y) + carry;
                *x = s as u8;
                carry = s >> 8;
            }
            Bytes::from(a)
        }
        AtomicOp::Max | AtomicOp::Min => {
            // Compare as little-endian unsigned: most significant byte last.
            let ord = a.iter().rev().cmp(param.iter().rev());
            let keep_current = match op {
                AtomicOp::Max => ord.is_ge(),
                _ => ord.is_le(),
            };
            if keep_current {
                Bytes::from(a)
            } else {
                Bytes::copy_from_slice(param)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn atomic_add_carries_and_extends() {
        assert_eq!(
            apply_atomic(AtomicOp::Add, Some(&[0xff, 0, 0, 0]), &[1, 0, 0, 0]).as_ref(),
            &[0, 1, 0, 0]
        );
        assert_eq!(apply_atomic(AtomicOp::Add, None, &[5, 0]).as_ref(), &[5, 0]);
        assert_eq!(
            apply_atomic(AtomicOp::Max, Some(&[0, 1]), &[0xff, 0]).as_ref(),
            &[0, 1]
        );
        assert_eq!(
            apply_atomic(AtomicOp::Min, Some(&[0, 1]), &[0xff, 0]).as_ref(),
            &[0xff, 0]
        );
    }
}
