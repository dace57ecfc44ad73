//! The write path: replies and queued deliveries in vectored writes, and
//! pulls of the inbox, with cursors that only move forward.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hanmadi_proto::{ErrorCode, SharedMessage};
use hanmadi_storage::chat::Cursor;
use hanmadi_storage::kv::Kv;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::reply::Close;
use super::Connection;
use crate::registry::{ConnShared, Follows, Outbound};

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
        let mut pull = Pull::None;
        loop {
            self.outbound.clear();
            // While a pull has pages left, queued deliveries wait: writing
            // one now would move the cursor past the pages not read yet.
            if pull == Pull::None {
                self.shared.drain_into(&mut self.outbound, 256);
            }
            if self.outbound.is_empty() && self.wbuf.is_empty() && pull == Pull::None {
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
            pull = pull.and(keep_unwritten(&mut self.outbound, &mut self.last_cursor));
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
            if pull != Pull::None && !Box::pin(self.pull(pull)).await? {
                pull = Pull::None;
            }
        }
    }

    /// Reads a page of the inbox after the last written cursor into `wbuf`
    /// as `Deliver` frames; returns whether more pages follow.
    async fn pull(&mut self, pull: Pull) -> Result<bool, Close> {
        let after = self.last_cursor;
        let until = match pull {
            Pull::Until(until) => Some(until),
            Pull::None | Pull::Newest => None,
        };
        let batch = self
            .ctx
            .router
            .pull(self.user, after, until)
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
        let m = &self.ctx.metrics;
        m.inbox_pulls.inc();
        m.frames_out.inc_by(batch.entries.len() as u64);
        Ok(batch.has_more)
    }
}

/// What a connection has to read from its inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pull {
    /// Nothing.
    None,
    /// Everything through this entry, which a commit made: the read may be
    /// made at that commit's version.
    Until(Cursor),
    /// Everything there is.
    Newest,
}

impl Pull {
    /// What both ask for.
    fn and(self, other: Pull) -> Pull {
        match (self, other) {
            (Pull::None, p) | (p, Pull::None) => p,
            (Pull::Until(a), Pull::Until(b)) => Pull::Until(a.max(b)),
            (Pull::Newest, _) | (_, Pull::Newest) => Pull::Newest,
        }
    }
}

/// Keeps the deliveries of `drained` to write, in order, advancing
/// `last_cursor` past them; returns what the pulls among them ask to read.
///
/// Cursors only move forward on a connection: deliveries already covered
/// by a pull are dropped, and so are those queued after a `Pull`, whose
/// commits the pull reads in order. Written first, they would move the
/// cursor past the commit the pull is for, which would never be delivered.
/// A chained delivery ([`Follows::Entry`]) is written only right after the
/// entry it follows; otherwise the pull reads through it.
fn keep_unwritten(drained: &mut Vec<Outbound>, last_cursor: &mut Option<Cursor>) -> Pull {
    let mut pull = Pull::None;
    drained.retain(|item| match item {
        Outbound::Pull => {
            pull = Pull::Newest;
            false
        }
        Outbound::PullUntil(until) => {
            if last_cursor.is_none_or(|last| last < *until) {
                pull = pull.and(Pull::Until(*until));
            }
            false
        }
        Outbound::Deliver {
            cursor, follows, ..
        } => {
            if last_cursor.is_some_and(|last| *cursor <= last) {
                return false;
            }
            let in_line = match follows {
                Follows::Queue => true,
                Follows::Entry(before) => before == last_cursor,
            };
            if pull != Pull::None || !in_line {
                pull = pull.and(Pull::Until(*cursor));
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
/// A write the socket takes at once arms no timer: registering one can wake
/// the runtime's parked I/O driver (an eventfd write and a thread switch),
/// which, once per write, cost the node more than the write itself. Only a
/// write that waits gets the deadline, counted from its first wait.
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
    let mut deadline = None;
    while !slices.is_empty() {
        if give_up && at_frame_boundary(written) {
            return Err(Close::slow_consumer());
        }
        let result = match poll_once(|cx| Pin::new(&mut *stream).poll_write_vectored(cx, slices))
            .await
        {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
                loop {
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
                }
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
    // TLS and WebSocket layers may hold the tail of what was written; a
    // plain socket's flush is done at once.
    let flushed = match poll_once(|cx| Pin::new(&mut *stream).poll_flush(cx)).await {
        Poll::Ready(r) => r,
        Poll::Pending => {
            let deadline = deadline.unwrap_or_else(|| Instant::now() + timeout);
            tokio::select! {
                r = stream.flush() => r,
                () = tokio::time::sleep_until(deadline) => return Err(Close::quiet("write_timeout")),
            }
        }
    };
    flushed.map_err(|_| Close::quiet("write_error"))?;
    Ok(writes)
}

/// Polls `poll` once and answers what it gave, `Pending` included (the
/// waker it registered stays registered for the next poll).
async fn poll_once<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use hanmadi_proto::SharedMessage;
    use hanmadi_storage::chat::{Cursor, CURSOR_LEN};

    use super::{keep_unwritten, Follows, Outbound, Pull};

    fn deliver(n: u8) -> Outbound {
        let cursor = Cursor([n; CURSOR_LEN]);
        let message = SharedMessage::encode(&hanmadi_proto::Message::default());
        Outbound::Deliver {
            cursor,
            frame: message.deliver_frame(cursor.as_bytes()).unwrap(),
            follows: Follows::Queue,
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
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::None);
        assert_eq!(cursors(&drained), [5, 6]);
        assert_eq!(last, Some(Cursor([6; CURSOR_LEN])));
    }

    #[test]
    fn deliveries_after_a_pull_wait_for_it() {
        // The pull is for a commit older than 7: writing 7 first would
        // move the cursor past it.
        let mut last = None;
        let mut drained = vec![deliver(1), Outbound::Pull, deliver(7), Outbound::Pull];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::Newest);
        assert_eq!(cursors(&drained), [1]);
        assert_eq!(last, Some(Cursor([1; CURSOR_LEN])));
    }

    #[test]
    fn a_chained_delivery_is_written_only_right_after_its_entry() {
        let c = |n: u8| Cursor([n; CURSOR_LEN]);
        let chained = |n: u8, before: Option<u8>| match deliver(n) {
            Outbound::Deliver { cursor, frame, .. } => Outbound::Deliver {
                cursor,
                frame,
                follows: Follows::Entry(before.map(c)),
            },
            other => other,
        };
        // In line: each follows the one written before it.
        let mut last = Some(c(3));
        let mut drained = vec![chained(5, Some(3)), chained(6, Some(5))];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::None);
        assert_eq!(cursors(&drained), [5, 6]);
        assert_eq!(last, Some(c(6)));
        // An inbox's first entry follows nothing.
        let mut last = None;
        let mut drained = vec![chained(2, None)];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::None);
        assert_eq!(last, Some(c(2)));
        // Entry 4 was never written here: the inbox is read through 7,
        // and nothing after the gap is written before that read.
        let mut last = Some(c(3));
        let mut drained = vec![chained(5, Some(4)), chained(7, Some(5)), deliver(8)];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::Until(c(8)));
        assert!(drained.is_empty());
        assert_eq!(last, Some(c(3)));
        // One written already asks for nothing.
        let mut last = Some(c(6));
        let mut drained = vec![chained(5, Some(4))];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::None);
        assert!(drained.is_empty());
    }

    #[test]
    fn a_pull_names_the_newest_entry_it_was_notified_of() {
        let c = |n: u8| Cursor([n; CURSOR_LEN]);
        let mut last = Some(c(4));
        // Entries the connection already wrote ask for nothing.
        let mut drained = vec![Outbound::PullUntil(c(2)), Outbound::PullUntil(c(4))];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::None);
        let mut drained = vec![
            Outbound::PullUntil(c(9)),
            Outbound::PullUntil(c(3)),
            Outbound::PullUntil(c(6)),
        ];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::Until(c(9)));
        // A pull of everything there is cannot read at an entry's version.
        let mut drained = vec![Outbound::PullUntil(c(9)), Outbound::Pull];
        assert_eq!(keep_unwritten(&mut drained, &mut last), Pull::Newest);
        assert_eq!(Pull::Until(c(9)).and(Pull::Newest), Pull::Newest);
        assert_eq!(Pull::None.and(Pull::Until(c(5))), Pull::Until(c(5)));
    }
}
