//! A stream: one upstream answer, its log, its owner and the connections following it.

mod registry;

pub use registry::{Registry, Rejected, RemoteFollower, Slot, StreamInfo};

use crate::identity::Owner;
use crate::ids::StreamId;
use crate::log::StreamLog;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream finished its answer.
    Completed,
    /// Its owner pressed Stop.
    Cancelled,
    /// Nobody came back within `detach_grace`.
    Abandoned,
    /// The upstream failed (reset, timeout, malformed).
    Error,
    /// The proxy shut down before the answer finished.
    Shutdown,
    /// The replica reading its upstream stopped renewing its lease (it died) before the end.
    Lost,
}

impl From<Outcome> for crate::metrics::FinishedOutcome {
    fn from(o: Outcome) -> Self {
        use crate::metrics::FinishedOutcome as F;
        match o {
            Outcome::Completed => F::Completed,
            Outcome::Cancelled => F::Cancelled,
            Outcome::Abandoned => F::Abandoned,
            Outcome::Error => F::Error,
            Outcome::Shutdown => F::Shutdown,
            Outcome::Lost => F::Lost,
        }
    }
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 6] = [
        Outcome::Completed,
        Outcome::Cancelled,
        Outcome::Abandoned,
        Outcome::Error,
        Outcome::Shutdown,
        Outcome::Lost,
    ];

    /// The word for it in logs, `/streams` and the `outcome` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::Abandoned => "abandoned",
            Outcome::Error => "error",
            Outcome::Shutdown => "shutdown",
            Outcome::Lost => "lost",
        }
    }
}

/// What a stream is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading its upstream.
    Running,
    /// Finished at this instant with this outcome; resumable until retention passes.
    Finished(Outcome, Instant),
}

/// One stream. Shared by its upstream task, its connections and the registry.
pub struct Stream {
    /// Its id.
    pub id: StreamId,
    /// The `[[stream]]` route it came from (as configured).
    pub route: Arc<str>,
    /// The model it is answered by.
    pub model: String,
    /// Who may resume or cancel it.
    pub owner: Option<Owner>,
    /// Its events.
    pub log: Arc<dyn StreamLog>,
    /// When it started.
    pub started: Instant,
    followers: watch::Sender<usize>,
    tokens: AtomicU64,
    state: watch::Sender<State>,
    cancel: CancellationToken,
}

impl Stream {
    /// A new running stream.
    pub fn new(
        id: StreamId,
        route: Arc<str>,
        model: String,
        owner: Option<Owner>,
        log: Arc<dyn StreamLog>,
    ) -> Self {
        Stream {
            id,
            route,
            model,
            owner,
            log,
            started: Instant::now(),
            followers: watch::Sender::new(0),
            tokens: AtomicU64::new(0),
            state: watch::Sender::new(State::Running),
            cancel: CancellationToken::new(),
        }
    }

    /// Adds a follower unless `max` are already attached.
    pub fn attach(self: &Arc<Self>, max: usize) -> Option<Follower> {
        let mut ok = false;
        self.followers.send_if_modified(|n| {
            ok = *n < max;
            if ok {
                *n += 1;
            }
            ok
        });
        ok.then(|| Follower(self.clone()))
    }

    /// Connections attached now.
    pub fn followers(&self) -> usize {
        *self.followers.borrow()
    }

    /// Watches the follower count (the upstream task detaches when it drops to zero).
    pub fn watch_followers(&self) -> watch::Receiver<usize> {
        self.followers.subscribe()
    }

    /// Tokens streamed so far.
    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }

    /// Adds to the token count.
    pub fn add_tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }

    /// Current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Marks the stream finished (once; later calls keep the first outcome).
    pub fn finish(&self, outcome: Outcome) {
        self.state.send_if_modified(|s| {
            let running = *s == State::Running;
            if running {
                *s = State::Finished(outcome, Instant::now());
            }
            running
        });
    }

    /// Asks the upstream task to stop generating (explicit cancel). Returns false if already finished.
    pub fn cancel(&self) -> bool {
        if self.state() != State::Running {
            return false;
        }
        self.cancel.cancel();
        true
    }

    /// Waits until the stream has finished and returns its final state.
    pub async fn finished(&self) -> State {
        let mut rx = self.state.subscribe();
        // The sender lives as long as `self`, so this only returns once the state changed.
        let state = rx.wait_for(|s| *s != State::Running).await.map(|s| *s);
        state.unwrap_or_else(|_| self.state())
    }

    /// Resolves when `cancel` is called.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

/// One connection following a stream; dropping it detaches.
pub struct Follower(Arc<Stream>);

impl Follower {
    /// The stream followed.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.0
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.followers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogBudget, MemoryLog};

    fn stream() -> Arc<Stream> {
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::new(id, 1 << 20, Arc::new(LogBudget::default())));
        Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log))
    }

    #[test]
    fn the_outcome_label_is_the_outcome_word() {
        use crate::metrics::{FinishedOutcome, LabelValue};
        let all = Outcome::ALL;
        for o in all {
            assert_eq!(FinishedOutcome::from(o).as_str(), o.as_str());
        }
        assert_eq!(all.len(), FinishedOutcome::ALL.len());
    }

    #[test]
    fn followers_bounded_and_released() {
        let s = stream();
        let a = s.attach(2).expect("first");
        let b = s.attach(2).expect("second");
        assert!(s.attach(2).is_none());
        drop(a);
        assert_eq!(s.followers(), 1);
        drop(b);
        assert_eq!(s.followers(), 0);
    }

    #[test]
    fn finish_keeps_first_outcome_and_cancel_refuses_finished() {
        let s = stream();
        assert!(s.cancel());
        s.finish(Outcome::Cancelled);
        s.finish(Outcome::Completed);
        assert!(matches!(s.state(), State::Finished(Outcome::Cancelled, _)));
        assert!(!s.cancel());
    }
}
