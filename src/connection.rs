//! A downstream connection: a cursor over a stream's log, turned into a response body.
//!
//! The cursor reads whatever the log holds after its position in one coalesced write (so a slow
//! client never builds a queue of small writes), waits for the log to grow, and writes a heartbeat
//! comment when nothing was written for the heartbeat interval.

use crate::http_util::ProxyBody;
use crate::log::{Read, Subscription};
use crate::metrics::Metrics;
use crate::protocol::{self, ErrorCode};
use crate::stream::Follower;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Per-connection write settings.
#[derive(Debug, Clone, Copy)]
pub struct CursorSettings {
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// Largest coalesced write.
    pub max_write_bytes: usize,
}

/// A connection's position in a stream's log.
pub struct Cursor {
    follower: Follower,
    sub: Subscription,
    pos: u64,
    preamble: Option<Bytes>,
    settings: CursorSettings,
    metrics: Arc<Metrics>,
    last_write: Instant,
    done: bool,
}

impl Cursor {
    /// A cursor that first writes `preamble` (the `retry:` line), then the events after `after`;
    /// it counts heartbeats and evictions into `metrics`.
    pub fn new(
        follower: Follower,
        after: u64,
        preamble: Bytes,
        settings: CursorSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let sub = follower.stream().log.subscribe();
        Cursor {
            follower,
            sub,
            pos: after,
            preamble: Some(preamble),
            settings,
            metrics,
            last_write: Instant::now(),
            done: false,
        }
    }

    /// The next bytes to write, or `None` when the stream has ended for this connection.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(p) = self.preamble.take() {
            return Some(p);
        }
        if self.done {
            return None;
        }
        loop {
            self.sub.mark_seen();
            match self
                .follower
                .stream()
                .log
                .read_after(self.pos, self.settings.max_write_bytes)
            {
                Read::Data { chunk, last } => {
                    self.pos = last;
                    self.last_write = Instant::now();
                    return Some(chunk);
                }
                Read::End => return None,
                Read::Gone => {
                    // The log dropped events this connection had not read yet (memory bound).
                    self.done = true;
                    self.metrics.error(ErrorCode::Evicted);
                    return Some(protocol::error_frame(ErrorCode::Evicted));
                }
                Read::Pending => {}
            }
            let beat_at = self.last_write + self.settings.heartbeat;
            if timeout_at(beat_at, self.sub.changed()).await.is_err() {
                self.last_write = Instant::now();
                self.metrics.heartbeats.increment(1);
                return Some(Bytes::from_static(protocol::HEARTBEAT));
            }
        }
    }

    /// The response body that drives this cursor; dropping it (client gone) detaches the follower.
    pub fn into_body(self) -> ProxyBody {
        let s = futures_util::stream::unfold(self, |mut c| async move {
            let chunk = c.next_chunk().await?;
            Some((Ok(Frame::data(chunk)), c))
        });
        StreamBody::new(s).boxed_unsync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StreamId;
    use crate::log::{LogBudget, MemoryLog};
    use crate::stream::Stream;

    fn setup(max_log: usize) -> (Arc<Stream>, Cursor) {
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::new(id, max_log, Arc::new(LogBudget::default())));
        let s = Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log));
        let f = s.attach(4).expect("attach");
        let settings = CursorSettings {
            heartbeat: Duration::from_secs(15),
            max_write_bytes: 1 << 16,
        };
        (
            s.clone(),
            Cursor::new(
                f,
                0,
                Bytes::from_static(b"retry: 1000\n\n"),
                settings,
                Arc::new(Metrics::noop()),
            ),
        )
    }

    fn s(b: Option<Bytes>) -> String {
        String::from_utf8(b.expect("chunk").to_vec()).expect("utf8")
    }

    #[tokio::test(start_paused = true)]
    async fn preamble_then_coalesced_events_then_end() {
        let (stream, mut c) = setup(1 << 20);
        assert_eq!(s(c.next_chunk().await), "retry: 1000\n\n");
        stream.log.append(None, "a");
        stream.log.append(None, "b");
        let chunk = s(c.next_chunk().await);
        assert_eq!(chunk.matches("data: ").count(), 2, "{chunk}");
        stream.log.close();
        assert!(c.next_chunk().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_after_idle_interval() {
        let (stream, mut c) = setup(1 << 20);
        c.next_chunk().await;
        let t0 = Instant::now();
        assert_eq!(s(c.next_chunk().await), ": heartbeat\n\n");
        assert_eq!(Instant::now() - t0, Duration::from_secs(15));
        // A write resets the idle clock.
        tokio::time::advance(Duration::from_secs(10)).await;
        stream.log.append(None, "x");
        c.next_chunk().await;
        let t1 = Instant::now();
        assert_eq!(s(c.next_chunk().await), ": heartbeat\n\n");
        assert_eq!(Instant::now() - t1, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn live_events_wake_the_cursor() {
        let (stream, mut c) = setup(1 << 20);
        c.next_chunk().await;
        let s2 = stream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s2.log.append(None, "live");
        });
        assert!(s(c.next_chunk().await).contains("data: live"));
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_position_ends_with_error() {
        let (stream, mut c) = setup(300);
        c.next_chunk().await;
        for _ in 0..20 {
            stream.log.append(None, &"z".repeat(50));
        }
        let chunk = s(c.next_chunk().await);
        assert!(chunk.contains("\"code\":\"evicted\""), "{chunk}");
        assert!(c.next_chunk().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_body_detaches() {
        let (stream, c) = setup(1 << 20);
        assert_eq!(stream.followers(), 1);
        drop(c.into_body());
        assert_eq!(stream.followers(), 0);
    }
}
