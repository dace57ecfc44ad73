//! The write path: replies and queued deliveries in vectored writes, and
//! pulls of the inbox, with cursors that only move forward.

use std::io::IoSlice;
use std::time::Duration;

use bytes::BytesMut;
use hanmadi_proto::{ErrorCode, SharedMessage};
use hanmadi_storage::chat::Cursor;
use hanmadi_storage::kv::Kv;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::reply::Close;
use super::Connection;
use crate::registry::{ConnShared, Outbound};

impl<S, K> Connection<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    K: Kv,
{
    /// Writes everything pending: replies, then queued deliveries, in
    /// vectored writes.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        // Set while a pull has inbox pages left: each page is written before
        // the next is read, so a backlog never piles up in `wbuf`, which the
        // outbound queue's cap does not bound.
        let mut pull = false;
        loop {
            self.outbound.clear();
            // While a pull has pages left, queued deliveries wait: writing
            // one now would move the cursor past the pages not read yet.
            if !pull {
                self.shared.drain_into(&mut self.outbound, 256);
            }
            if self.outbound.is_empty() && self.wbuf.is_empty() && !pull {
                // A burst must not leave an idle connection holding its
                // buffers.
                if self.outbound.capacity() > 16 {
                    self.outbound = Vec::new();
                }
                if self.wbuf.capacity() > 4096 {
                    self.wbuf = BytesMut::new();
                }
                return Ok(());
            }
            let released: usize = self.outbound.iter().map(Outbound::byte_len).sum();
            pull |= keep_unwritten(&mut self.outbound, &mut self.last_cursor);
            let prefix = self.wbuf.split().freeze();
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(1 + 2 * self.outbound.len());
            if !prefix.is_empty() {
                slices.push(IoSlice::new(&prefix));
            }
            for item in &self.outbound {
                if let Outbound::Deliver { frame, .. } = item {
                    slices.push(IoSlice::new(frame.header()));
                    slices.push(IoSlice::new(frame.message()));
                }
            }
            // Replies are small: the whole prefix counts as one frame.
            let frame_lens =
                std::iter::once(prefix.len()).chain(self.outbound.iter().map(Outbound::byte_len));
            let writes = write_all_vectored(
                &mut self.stream,
                &mut slices,
                frame_lens,
                self.ctx.config.write_timeout,
                &self.shared,
            )
            .await?;
            self.shared.release(released);
            let m = &self.ctx.metrics;
            m.frames_out.inc_by(self.outbound.len() as u64);
            m.socket_writes.inc_by(writes);
            if pull {
                pull = Box::pin(self.pull()).await?;
            }
        }
    }

    /// Reads a page of the inbox after the last written cursor into `wbuf`
    /// as `Deliver` frames; returns whether more pages follow.
    async fn pull(&mut self) -> Result<bool, Close> {
        let after = self.last_cursor;
        let batch = self
            .ctx
            .router
            .pull(self.user, after)
            .await
            .map_err(|e| Close::with(e.code(), "pull_failed", e.to_string()))?;
        for e in &batch.entries {
            let header = SharedMessage::from_encoded(e.message.clone())
                .deliver_header(e.cursor.as_bytes())
                .map_err(|err| Close::with(ErrorCode::Internal, "encode_error", err.to_string()))?;
            self.wbuf.extend_from_slice(header.as_slice());
            self.wbuf.extend_from_slice(&e.message);
            self.last_cursor = Some(e.cursor);
        }
        self.ctx
            .metrics
            .frames_out
            .inc_by(batch.entries.len() as u64);
        Ok(batch.has_more)
    }
}

/// Keeps the deliveries of `drained` to write, in order, advancing
/// `last_cursor` past them; returns whether a `Pull` was among them.
///
/// Cursors only move forward on a connection: deliveries already covered
/// by a pull are dropped, and so are those queued after a `Pull`, whose
/// commits the pull reads in order. Written first, they would move the
/// cursor past the commit the pull is for, which would never be delivered.
fn keep_unwritten(drained: &mut Vec<Outbound>, last_cursor: &mut Option<Cursor>) -> bool {
    let mut pull = false;
    drained.retain(|item| match item {
        Outbound::Pull => {
            pull = true;
            false
        }
        Outbound::PullUntil(until) => {
            pull |= last_cursor.is_none_or(|last| last < *until);
            false
        }
        Outbound::Deliver { cursor, .. } => {
            if pull || last_cursor.is_some_and(|last| *cursor <= last) {
                return false;
            }
            *last_cursor = Some(*cursor);
            true
        }
    });
    pull
}

/// Writes every slice, however the socket splits it; returns the number of
/// write calls. `frame_lens` are the lengths of the whole frames the slices
/// hold, in order.
///
/// A write stalled on a full socket gives up once the outbound queue
/// overflows too (that reader is a slow consumer), but only at a frame
/// boundary, so the close reason that follows is not spliced into a frame.
async fn write_all_vectored<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut slices: &mut [IoSlice<'_>],
    frame_lens: impl Iterator<Item = usize> + Clone,
    timeout: Duration,
    shared: &ConnShared,
) -> Result<u64, Close> {
    // Walked only once the queue overflowed, which is rare.
    let at_frame_boundary = |written: usize| {
        let mut end = 0;
        written == 0
            || frame_lens.clone().any(|len| {
                end += len;
                end == written
            })
    };
    let mut writes = 0;
    let mut written = 0usize;
    let mut give_up = false;
    let deadline = tokio::time::Instant::now() + timeout;
    while !slices.is_empty() {
        if give_up && at_frame_boundary(written) {
            return Err(Close::slow_consumer());
        }
        let result = loop {
            tokio::select! {
                r = stream.write_vectored(slices) => break r,
                () = shared.wake.notified(), if !give_up => {
                    if shared.is_slow() {
                        give_up = true;
                        if at_frame_boundary(written) {
                            return Err(Close::slow_consumer());
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Err(Close::quiet("write_timeout")),
            }
        };
        let n = match result {
            Ok(0) | Err(_) => return Err(Close::quiet("write_error")),
            Ok(n) => n,
        };
        writes += 1;
        written += n;
        IoSlice::advance_slices(&mut slices, n);
    }
    // TLS and WebSocket layers may hold the tail of what was written.
    tokio::select! {
        r = stream.flush() => r.map_err(|_| Close::quiet("write_error"))?,
        () = tokio::time::sleep_until(deadline) => return Err(Close::quiet("write_timeout")),
    }
    Ok(writes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hanmadi_proto::SharedMessage;
    use hanmadi_storage::chat::{Cursor, CURSOR_LEN};

    use super::{keep_unwritten, Outbound};

    fn deliver(n: u8) -> Outbound {
        let cursor = Cursor([n; CURSOR_LEN]);
        let message = SharedMessage::encode(&hanmadi_proto::Message::default());
        Outbound::Deliver {
            cursor,
            frame: message.deliver_frame(cursor.as_bytes()).unwrap(),
        }
    }

    fn cursors(items: &[Outbound]) -> Vec<u8> {
        items
            .iter()
            .map(|item| match item {
                Outbound::Deliver { cursor, .. } => cursor.0[0],
                Outbound::Pull | Outbound::PullUntil(_) => 0,
            })
            .collect()
    }

    #[test]
    fn written_cursors_only_move_forward() {
        let mut last = Some(Cursor([3; CURSOR_LEN]));
        let mut drained = vec![deliver(2), deliver(3), deliver(5), deliver(4), deliver(6)];
        assert!(!keep_unwritten(&mut drained, &mut last));
        assert_eq!(cursors(&drained), [5, 6]);
        assert_eq!(last, Some(Cursor([6; CURSOR_LEN])));
    }

    #[test]
    fn deliveries_after_a_pull_wait_for_it() {
        // The pull is for a commit older than 7: writing 7 first would
        // move the cursor past it.
        let mut last = None;
        let mut drained = vec![deliver(1), Outbound::Pull, deliver(7), Outbound::Pull];
        assert!(keep_unwritten(&mut drained, &mut last));
        assert_eq!(cursors(&drained), [1]);
        assert_eq!(last, Some(Cursor([1; CURSOR_LEN])));
    }
}
