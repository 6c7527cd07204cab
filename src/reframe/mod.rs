//! The upstream reader of one stream: bytes → SSE parser → batcher and progress → the stream's log.
//!
//! It runs as its own task, independent of any client connection: connections come and go as
//! cursors over the log while this task keeps reading until the answer ends, the owner cancels, the
//! stream is abandoned, or the proxy shuts down. Appends to the log are local and synchronous; the
//! store writer sends them to the stream store a batch at a time, and cursors see them once stored.

pub mod batcher;
pub mod body;
pub mod format;
pub mod lines;
mod store_writer;
pub mod token;

use crate::cluster::{Admitted, SharedHistory};
use crate::config::UpstreamFormat;
use crate::metrics::{DroppedReason, Metrics};
use crate::progress::{Cadence, Learner, Tracker};
use crate::protocol::{self, ErrorCode};
use crate::sse::{Event, Parser};
use crate::store::{self, NewStream};
use crate::stream::{Outcome, Registry, Stream};
use batcher::{Batcher, Limits};
use body::BodyError;
use bytes::Bytes;
use format::{Action, BackendError, Dialect, Framing, Input};
use http_body::Body;
use http_body_util::BodyExt;
use lines::Lines;
use std::sync::Arc;
use std::time::Duration;
use store_writer::StoreWriter;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

/// Everything a stream's reader needs that is fixed for its route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The route as configured (label).
    pub label: Arc<str>,
    /// Upstream event type carrying tokens.
    pub token_event: String,
    /// JSON Pointer to token text; the raw data when `None`.
    pub token_path: Option<token::Pointer>,
    /// Upstream events that end the stream.
    pub terminal_events: Vec<String>,
    /// The upstream's dialect.
    pub format: UpstreamFormat,
    /// `sse`: data values that end the stream.
    pub terminal_data: Vec<String>,
    /// `sse`: empty token text is not a token.
    pub skip_empty_tokens: bool,
    /// `sse`: events that carry the backend's own error.
    pub error_events: Vec<String>,
}

impl RouteSettings {
    /// A `format = "sse"` route with the defaults: tokens are the raw data of `message` events,
    /// `done` ends, `error` is the backend's error.
    pub fn sse(label: &str) -> RouteSettings {
        RouteSettings {
            label: label.into(),
            token_event: protocol::EVENT_MESSAGE.into(),
            token_path: None,
            terminal_events: vec![protocol::EVENT_DONE.into()],
            format: UpstreamFormat::Sse,
            terminal_data: Vec::new(),
            skip_empty_tokens: false,
            error_events: vec![protocol::EVENT_ERROR.into()],
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test() -> RouteSettings {
        RouteSettings::sse("/r")
    }
}

/// How the upstream body is split into items.
enum Splitter {
    Sse(Parser),
    Lines(Lines),
}

/// One upstream item, owned.
enum Item {
    Event(Event),
    Line(String),
}

/// Settings shared by every stream's reader.
#[derive(Debug, Clone, Copy)]
pub struct ReaderSettings {
    /// Batching limits.
    pub batching: Limits,
    /// Upstream silence that ends a stream.
    pub idle_timeout: Duration,
    /// Largest upstream event.
    pub max_event_bytes: usize,
    /// How long a stream with no follower keeps reading.
    pub detach_grace: Duration,
    /// `resume.on_disconnect = "cancel"`: the last follower leaving is a Stop, not a detach.
    pub cancel_on_disconnect: bool,
    /// Time allowed after shutdown starts.
    pub shutdown_grace: Duration,
}

/// Progress events of every stream: how often, and the learned lengths they estimate from.
#[derive(Debug, Clone)]
pub struct ProgressEvents {
    /// Learned answer lengths, shared by all streams.
    pub learner: Arc<Learner>,
    /// At most one progress event per this many tokens and this interval.
    pub cadence: Cadence,
    /// Where completed answers' lengths are shared with other replicas, when the store is shared.
    pub(crate) shared: Option<Arc<SharedHistory>>,
}

/// What every stream's reader shares with the others.
pub struct Shared {
    /// Their settings.
    pub settings: ReaderSettings,
    /// All streams (the memory budget of their logs).
    pub registry: Arc<Registry>,
    /// Progress events, when enabled.
    pub progress: Option<ProgressEvents>,
    /// Where every stream's events are written.
    pub store: store::Handle,
}

/// Why the reader stopped, and what the stream's last event says.
enum End {
    /// The upstream sent a terminal event (already appended).
    Terminal,
    /// The upstream body ended between events without one.
    Eof,
    /// Owner pressed Stop.
    Cancelled,
    /// An error event with this code.
    Error(ErrorCode),
    /// The backend reported this error itself.
    Backend(BackendError),
}

/// How a stream that ended with `code` is counted.
fn outcome(code: ErrorCode) -> Outcome {
    match code {
        ErrorCode::Shutdown => Outcome::Shutdown,
        ErrorCode::Abandoned => Outcome::Abandoned,
        ErrorCode::UpstreamLost => Outcome::Lost,
        _ => Outcome::Error,
    }
}

/// Reads one stream's upstream into its log.
pub struct Reader<B> {
    stream: Arc<Stream>,
    body: B,
    route: Arc<RouteSettings>,
    settings: ReaderSettings,
    registry: Arc<Registry>,
    store: store::Handle,
    splitter: Splitter,
    dialect: Dialect,
    batcher: Batcher,
    progress: Option<Tracker>,
    arrived: Instant,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    tokens: u64,
    /// Seq of the last event appended to the log.
    appended: u64,
    metrics: Arc<Metrics>,
    history: Option<Arc<SharedHistory>>,
    admitted: Admitted,
}

impl<B> Reader<B>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    /// A reader for `stream` on `route`, fed by `body`; `arrived` is when the client's request
    /// arrived. It counts into the registry's metrics.
    pub fn new(
        stream: Arc<Stream>,
        body: B,
        route: Arc<RouteSettings>,
        shared: &Shared,
        admitted: Admitted,
        arrived: Instant,
    ) -> Self {
        let progress = shared.progress.as_ref().map(|p| {
            Tracker::new(
                p.learner.clone(),
                route.label.to_string(),
                stream.model.clone(),
                p.cadence,
                arrived,
            )
        });
        let settings = shared.settings;
        Reader {
            metrics: shared.registry.metrics().clone(),
            splitter: match Framing::of(route.format) {
                Framing::Sse => Splitter::Sse(Parser::new(settings.max_event_bytes)),
                Framing::Lines => Splitter::Lines(Lines::new(settings.max_event_bytes)),
            },
            dialect: Dialect::new(&route),
            batcher: Batcher::new(settings.batching),
            stream,
            body,
            route,
            settings,
            registry: shared.registry.clone(),
            store: shared.store.clone(),
            progress,
            arrived,
            first_token: None,
            last_token: None,
            tokens: 0,
            appended: 0,
            history: shared.progress.as_ref().and_then(|p| p.shared.clone()),
            admitted,
        }
    }

    /// Reads until the stream ends, then closes its log. The upstream body is dropped on return,
    /// which closes the backend connection if the answer was not complete.
    pub fn run(self, shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
        // On the heap, once: an `async fn` taking `self` by value holds the reader twice in its
        // task (the argument and its binding), for the whole life of the stream.
        let mut reader = Box::new(self);
        async move { reader.read(shutdown).await }
    }

    async fn read(&mut self, shutdown: CancellationToken) {
        let _guard = EndGuard(self.stream.clone(), self.metrics.clone());
        self.metrics.streams_started.increment(1);
        let handle = self.store.clone();
        let record = NewStream {
            owner: self.stream.owner,
            route: self.route.label.to_string(),
            model: self.stream.model.clone(),
            replica: handle.replica.to_string(),
        };
        let mut writer = StoreWriter::new(
            &*handle.store,
            handle.lease,
            &self.stream,
            record,
            self.metrics.clone(),
        );
        writer.refresh_claim(self.admitted.claim().cloned());
        let end = self.drive(shutdown, &mut writer).await;
        let outcome = self.write_end(end);
        // Local clients get the end only once the store has it (or has failed to take it).
        writer.finish(outcome, self.appended).await;
        self.stream.finish(outcome);
        self.stream.log.close();
        self.record(outcome);
        tracing::info!(
            outcome = outcome.as_str(),
            tokens = self.tokens,
            "stream finished"
        );
    }

    async fn drive(&mut self, shutdown: CancellationToken, writer: &mut StoreWriter<'_>) -> End {
        let mut followers = self.stream.watch_followers();
        let mut detached_since = (*followers.borrow_and_update() == 0).then(Instant::now);
        let mut shutdown_at: Option<Instant> = None;
        let stream = self.stream.clone();
        // Made once and polled again at every turn (a token is a turn or two): a fresh one per
        // turn would register and deregister itself each time. The idle deadline only moves
        // later, which a timer takes without a trip to the timer wheel; the batch deadline also
        // moves earlier, and a timer moved later still wakes the thread at its old deadline, so
        // that one is made per turn.
        let cancelled = stream.cancelled();
        let shutting_down = shutdown.cancelled();
        let idle = sleep_until(Instant::now() + self.settings.idle_timeout);
        tokio::pin!(cancelled, shutting_down, idle);
        loop {
            let detach_at = detached_since.map(|t| t + self.settings.detach_grace);
            if detached_since.is_some() && self.settings.cancel_on_disconnect {
                return End::Cancelled;
            }
            let batch_at = self.batcher.deadline();
            if writer.kick(self.appended).is_err() {
                return End::Error(ErrorCode::UpstreamLost);
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => return End::Cancelled,
                _ = sleep_opt(shutdown_at) => return End::Error(ErrorCode::Shutdown),
                _ = sleep_opt(detach_at) => return End::Error(ErrorCode::Abandoned),
                _ = &mut shutting_down, if shutdown_at.is_none() => {
                    shutdown_at = Some(Instant::now() + self.settings.shutdown_grace);
                    if self.store.handoff {
                        tracing::info!("shutting down: clients resume on another replica; reading on");
                        detached_since = None;
                    }
                }
                changed = followers.changed() => {
                    if changed.is_err() {
                        return End::Error(ErrorCode::Abandoned);
                    }
                    let n = *followers.borrow_and_update();
                    // Handed-off clients follow from another replica: leaving is neither a detach
                    // nor a Stop.
                    let handed_off = shutdown_at.is_some() && self.store.handoff;
                    detached_since = match (n, detached_since) {
                        _ if handed_off => None,
                        (0, None) => Some(Instant::now()),
                        (0, since) => since,
                        _ => None,
                    };
                }
                done = writer.next() => {
                    if writer.handle(done).is_err() {
                        return End::Error(ErrorCode::UpstreamLost);
                    }
                }
                _ = sleep_opt(batch_at) => self.flush(Instant::now()),
                frame = self.body.frame() => match frame {
                    None => return self.at_eof(),
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "upstream body failed");
                        return End::Error(e.code());
                    }
                    Some(Ok(frame)) => {
                        idle.as_mut().reset(Instant::now() + self.settings.idle_timeout);
                        if let Ok(data) = frame.into_data() {
                            if let Some(end) = self.feed(data) {
                                return end;
                            }
                        }
                    }
                },
                // After the frame: a frame that is there when the deadline passes is read.
                _ = &mut idle => return End::Error(ErrorCode::UpstreamTimeout),
            }
        }
    }

    /// The end of the upstream body: a complete answer only when it ends between events.
    fn at_eof(&mut self) -> End {
        let cut = match &mut self.splitter {
            Splitter::Sse(p) => p.finish(),
            Splitter::Lines(l) => match l.take_rest() {
                // A last line without its line end is still whole when it is whole JSON.
                Some(rest) if serde_json::from_str::<serde::de::IgnoredAny>(&rest).is_ok() => {
                    if let Some(end) = self.on_item("", &rest) {
                        return end;
                    }
                    false
                }
                rest => rest.is_some(),
            },
        };
        if cut {
            // A close-delimited body cut mid-event looks like a clean end to HTTP.
            tracing::warn!("upstream body ended in the middle of an event");
            return End::Error(ErrorCode::UpstreamReset);
        }
        End::Eof
    }

    /// Splits a chunk and handles its items; `Some` when the stream must end.
    fn feed(&mut self, data: Bytes) -> Option<End> {
        let result = match &mut self.splitter {
            Splitter::Sse(p) => p.feed(data).map_err(|e| e.to_string()),
            Splitter::Lines(l) => l.feed(&data).map_err(|e| e.to_string()),
        };
        loop {
            let item = match &mut self.splitter {
                Splitter::Sse(p) => p.next_event().map(Item::Event),
                Splitter::Lines(l) => l.next_line().map(Item::Line),
            };
            let end = match item {
                None => break,
                Some(Item::Event(ev)) => self.on_item(ev.event.as_str(), ev.data.as_str()),
                Some(Item::Line(line)) => self.on_item("", &line),
            };
            if end.is_some() {
                return end;
            }
        }
        match result {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "upstream event too large");
                Some(End::Error(ErrorCode::UpstreamMalformed))
            }
        }
    }

    /// Handles one upstream event or line as the route's format reads it.
    fn on_item(&mut self, event: &str, data: &str) -> Option<End> {
        self.metrics.upstream_events.increment(1);
        let now = Instant::now();
        match self.dialect.read(Input { event, data }) {
            Action::Token(tok) => self.on_token(&tok, now),
            Action::Drop(reason) => self.metrics.upstream_dropped.increment(reason),
            // The proxy's own progress events replace the upstream's.
            Action::Pass if event == protocol::EVENT_PROGRESS && self.progress.is_some() => {
                self.metrics.upstream_dropped.increment(DroppedReason::Progress);
            }
            Action::Pass => {
                self.flush(now);
                self.append(Some(event), data);
            }
            Action::End(terminal) => {
                if let Some(tok) = terminal.token {
                    self.on_token(&tok, now);
                }
                self.flush(now);
                self.final_progress(now);
                if terminal.pass {
                    self.append(Some(event), data);
                }
                return Some(End::Terminal);
            }
            Action::Error(e) => return Some(End::Backend(e)),
            Action::Malformed(why) => {
                tracing::warn!(why, "upstream sent what its format does not allow");
                return Some(End::Error(ErrorCode::UpstreamMalformed));
            }
        }
        None
    }

    fn on_token(&mut self, tok: &str, now: Instant) {
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
        if let Some(batch) = self.batcher.push(tok, now) {
            self.send_batch(batch, now);
        }
    }

    fn append(&mut self, event: Option<&str>, data: &str) {
        let event = event.filter(|e| *e != protocol::EVENT_MESSAGE);
        let seq = self.stream.log.append(event, data);
        self.appended = self.appended.max(seq);
        self.metrics.downstream_events.increment(1);
        self.registry.enforce_budget();
    }

    fn flush(&mut self, now: Instant) {
        if let Some(batch) = self.batcher.take() {
            self.send_batch(batch, now);
        }
    }

    fn send_batch(&mut self, batch: batcher::Batch, now: Instant) {
        if self.tokens == 0 {
            self.metrics
                .ttft
                .record(now.saturating_duration_since(self.arrived).as_secs_f64());
        }
        let n = batch.tokens as u64;
        self.append(None, &protocol::batch(&batch.text, batch.tokens));
        self.tokens += n;
        self.stream.add_tokens(n);
        self.metrics.tokens.increment(n);
        self.metrics.batch_tokens.record(batch.tokens as f64);
        if let Some(p) = self.progress.as_mut() {
            p.on_tokens(n, now);
            if p.due(now) {
                let snap = p.snapshot(now);
                self.append_progress(&snap);
            }
        }
    }

    fn final_progress(&mut self, now: Instant) {
        if let Some(p) = self.progress.as_mut() {
            let snap = p.finish(now);
            self.append_progress(&snap);
        }
    }

    fn append_progress(&mut self, snap: &impl serde::Serialize) {
        if let Ok(data) = serde_json::to_string(snap) {
            self.append(Some(protocol::EVENT_PROGRESS), &data);
        }
    }

    /// Writes the stream's last event for `end`; returns the outcome.
    fn write_end(&mut self, end: End) -> Outcome {
        let now = Instant::now();
        match end {
            End::Terminal => {
                let done = protocol::done_with(self.dialect.done_fields(), self.tokens);
                self.append(Some(protocol::EVENT_DONE), &done);
                Outcome::Completed
            }
            End::Eof => {
                self.flush(now);
                self.final_progress(now);
                let done = protocol::done_with(self.dialect.done_fields(), self.tokens);
                self.append(Some(protocol::EVENT_DONE), &done);
                Outcome::Completed
            }
            End::Backend(e) => {
                self.flush(now);
                tracing::warn!(message = %e.message, "the backend reported an error");
                self.metrics.error(ErrorCode::UpstreamError);
                let data = protocol::upstream_error(&e.message, e.recoverable);
                self.append(Some(protocol::EVENT_ERROR), &data);
                Outcome::Error
            }
            End::Cancelled => {
                self.flush(now);
                self.append(Some(protocol::EVENT_DONE), &protocol::done(self.tokens, true));
                Outcome::Cancelled
            }
            End::Error(code) => {
                self.flush(now);
                self.metrics.error(code);
                self.append(Some(protocol::EVENT_ERROR), &protocol::error(code));
                outcome(code)
            }
        }
    }

    fn record(&mut self, outcome: Outcome) {
        self.metrics.streams_finished.increment(outcome.into());
        self.metrics
            .stream_duration
            .record(self.arrived.elapsed().as_secs_f64());
        if let (Some(first), Some(last)) = (self.first_token, self.last_token) {
            let secs = last.saturating_duration_since(first).as_secs_f64();
            if secs > 0.0 && self.tokens > 1 {
                self.metrics.stream_tps.record((self.tokens - 1) as f64 / secs);
            }
        }
        if outcome != Outcome::Completed || self.tokens == 0 {
            return;
        }
        if let Some(p) = self.progress.as_ref() {
            if let Some(err) = p.estimate_error_at_quarter(self.tokens) {
                self.metrics.progress_error.record(err);
            }
            p.learn(self.tokens);
            if let Some(shared) = self.history.as_ref() {
                shared.share(&self.route.label, &self.stream.model, self.tokens);
            }
        }
    }
}

/// Ends the stream's log if its reader stops without doing so, so that followers get an error
/// event and their connections end instead of waiting forever. A panic is a bug; otherwise the
/// runtime stopped with the reader still running (readers outlived the shutdown wait).
struct EndGuard(Arc<Stream>, Arc<Metrics>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        if self.0.state() != crate::stream::State::Running {
            return;
        }
        let (code, outcome) = if std::thread::panicking() {
            tracing::error!("stream reader stopped unexpectedly");
            (ErrorCode::Internal, Outcome::Error)
        } else {
            tracing::warn!("stream reader stopped by the runtime before it ended its stream");
            (ErrorCode::Shutdown, Outcome::Shutdown)
        };
        self.1.error(code);
        self.0
            .log
            .append(Some(protocol::EVENT_ERROR), &protocol::error(code));
        self.0.finish(outcome);
        self.0.log.close();
    }
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::{Cursor, CursorSettings};
    use crate::ids::StreamId;
    use crate::log::{LogBudget, MemoryLog, Read};
    use crate::store::gate::Gate;
    use crate::store::{Batch, MemoryStore, State as StoreState, Store};
    use http_body::Frame;
    use http_body_util::StreamBody;
    use std::pin::Pin;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    type Frames = Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, BodyError>> + Send>>;

    /// A reader started on a staged log behind `gate`, fed by `tx`, with one cursor attached.
    struct Running {
        stream: Arc<Stream>,
        tx: mpsc::UnboundedSender<Bytes>,
        cursor: Cursor,
    }

    fn memory_store() -> Arc<MemoryStore> {
        MemoryStore::for_tests()
    }

    fn start(gate: Arc<Gate>, max_log: usize) -> Running {
        start_with(gate, max_log, false, CancellationToken::new())
    }

    /// [`start`] with a stream store other replicas serve from (`handoff`), with
    /// `resume.on_disconnect = "cancel"` then, and `shutdown`.
    fn start_with(gate: Arc<Gate>, max_log: usize, handoff: bool, shutdown: CancellationToken) -> Running {
        let metrics = Arc::new(Metrics::noop());
        let id = StreamId::random();
        let budget = Arc::new(LogBudget::default());
        let registry = Arc::new(Registry::new(
            budget.clone(),
            10,
            10,
            1 << 30,
            Duration::from_secs(60),
            metrics.clone(),
        ));
        let log = Arc::new(MemoryLog::staged(id, max_log, budget));
        let stream = Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log));
        registry.insert(stream.clone());
        let handle = store::Handle {
            handoff,
            ..store::Handle::new(gate, Duration::from_secs(5))
        };
        let admission = crate::cluster::Admission::new(registry.clone(), handle.clone(), metrics.clone());
        let admitted = futures_util::FutureExt::now_or_never(admission.admit(id, None))
            .expect("a memory store answers at once")
            .expect("admitted");
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let frames: Frames = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
        }));
        let route = Arc::new(RouteSettings::for_test());
        let shared = Shared {
            settings: ReaderSettings {
                batching: Limits {
                    max_delay: Duration::from_millis(100),
                    max_tokens: 1,
                    max_bytes: 4096,
                    adaptive: false,
                },
                idle_timeout: Duration::from_secs(600),
                max_event_bytes: 1 << 20,
                detach_grace: Duration::from_secs(600),
                cancel_on_disconnect: handoff,
                shutdown_grace: Duration::from_secs(30),
            },
            registry,
            progress: None,
            store: handle,
        };
        let follower = stream.attach(4).expect("attach");
        let cursor_settings = CursorSettings {
            heartbeat: Duration::from_secs(15),
            max_write_bytes: 1 << 16,
        };
        let mut cursor = Cursor::new(
            follower,
            0,
            Bytes::from_static(b"retry: 1000\n"),
            cursor_settings,
            metrics,
        );
        if handoff {
            cursor = cursor.hand_off_on(shutdown.clone());
        }
        let body = StreamBody::new(frames);
        let reader = Reader::new(stream.clone(), body, route, &shared, admitted, Instant::now());
        tokio::spawn(reader.run(shutdown));
        Running { stream, tx, cursor }
    }

    impl Running {
        fn send(&self, token: &str) {
            self.tx
                .send(Bytes::from(format!("data: {token}\n\n")))
                .expect("reader reads");
        }

        fn done(&self) {
            self.tx
                .send(Bytes::from_static(b"event: done\ndata: {}\n\n"))
                .expect("reader reads");
        }

        /// Chunks until one contains `needle` (heartbeats would show up as chunks too).
        async fn read_until(&mut self, needle: &str) -> String {
            let mut seen = String::new();
            while !seen.contains(needle) {
                let chunk = self.cursor.next_chunk().await.expect("the stream goes on");
                let chunk = String::from_utf8_lossy(&chunk).into_owned();
                assert!(!chunk.starts_with(':'), "no heartbeat expected: {seen}");
                seen.push_str(&chunk);
            }
            seen
        }
    }

    /// Lets the other tasks run until `f` holds; the clock does not move.
    async fn until(mut f: impl FnMut() -> bool) {
        for _ in 0..100_000 {
            if f() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the condition never held");
    }

    #[tokio::test(start_paused = true)]
    async fn the_readers_place_in_the_limits_is_refreshed_until_it_ends() {
        let gate = Gate::new(memory_store());
        let mut r = start(gate.clone(), 1 << 20);
        for i in 0..4 {
            r.send(&format!("t{i}"));
            r.read_until(&format!("t{i}")).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let held: Vec<_> = gate
            .claims()
            .await
            .expect("claims")
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(held, vec![r.stream.id], "held four leases on");
        r.done();
        r.read_until("event: done").await;
        let released = async {
            while !gate.claims().await.expect("claims").is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        timeout(Duration::from_secs(1), released)
            .await
            .expect("given back when the reader ends");
    }

    #[tokio::test(start_paused = true)]
    async fn events_reach_cursors_only_once_the_store_has_them() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        gate.close();
        let mut r = start(gate.clone(), 1 << 20);
        assert_eq!(
            &r.cursor.next_chunk().await.expect("preamble")[..],
            b"retry: 1000\n"
        );
        r.send("a");
        until(|| r.stream.log.last_seq() == 1 && gate.waiting() == 1).await;
        assert_eq!(r.stream.log.durable_seq(), 0);
        // Not shown although it is in the local log (waiting less than the stall guard).
        let early = timeout(Duration::from_millis(900), r.cursor.next_chunk()).await;
        assert!(early.is_err(), "shown before the store had it: {early:?}");
        r.send("b");
        r.send("c");
        until(|| r.stream.log.last_seq() == 3).await;
        gate.open();
        let seen = r.read_until(r#""content":"c""#).await;
        assert!(seen.contains("\"a\"") && seen.contains("\"b\""), "{seen}");
        assert_eq!(gate.appends(), [(1, 3)], "one append for what waited");

        // Events appended while a batch is in flight go together in the next one.
        gate.close();
        r.send("d");
        until(|| r.stream.log.last_seq() == 4 && gate.waiting() == 1).await;
        r.send("e");
        r.send("f");
        until(|| r.stream.log.last_seq() == 6).await;
        assert_eq!(r.stream.log.durable_seq(), 3);
        gate.open();
        r.read_until(r#""content":"f""#).await;
        assert_eq!(gate.appends(), [(1, 3), (4, 1), (5, 2)]);

        r.done();
        r.read_until("event: done").await;
        assert!(
            r.cursor.next_chunk().await.is_none(),
            "the end follows the store's"
        );
        let meta = memory.meta(r.stream.id).await.expect("in the store");
        assert_eq!(meta.state, StoreState::Finished(Outcome::Completed));
        assert_eq!(meta.last_seq, 7);
        assert_eq!(
            memory.read(r.stream.id, 0, usize::MAX).await,
            Ok(r.stream.log.read_after(0, usize::MAX))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_on_a_shared_store_hands_the_client_off_and_reads_the_upstream_on() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        let shutdown = CancellationToken::new();
        let mut r = start_with(gate.clone(), 1 << 20, true, shutdown.clone());
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        // "b" is appended but the store does not have it yet.
        gate.close();
        r.send("b");
        until(|| r.stream.log.last_seq() == 2 && gate.waiting() == 1).await;
        shutdown.cancel();
        assert_eq!(
            &r.cursor.next_chunk().await.expect("the hand-off")[..],
            b"retry: 250\n",
            "after what the store has, come back soon"
        );
        assert!(r.cursor.next_chunk().await.is_none());
        // The client leaving is not a Stop (on_disconnect = "cancel"): it follows elsewhere.
        let Running { stream, tx, cursor } = r;
        drop(cursor);
        until(|| stream.followers() == 0).await;
        gate.open();
        tx.send(Bytes::from_static(b"data: c\n\n")).expect("reader reads");
        tx.send(Bytes::from_static(b"event: done\ndata: {}\n\n"))
            .expect("reader reads");
        let end = stream.finished().await;
        assert!(
            matches!(end, crate::stream::State::Finished(Outcome::Completed, _)),
            "{end:?}"
        );
        let meta = memory.meta(stream.id).await.expect("in the store");
        assert_eq!(meta.state, StoreState::Finished(Outcome::Completed));
        assert_eq!(meta.last_seq, 4, "a, b, c, done");
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_only_stream_keeps_its_clients_through_a_shutdown() {
        let gate = Gate::new(memory_store());
        gate.fail(true);
        let shutdown = CancellationToken::new();
        let mut r = start_with(gate.clone(), 1 << 20, true, shutdown.clone());
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        shutdown.cancel();
        r.send("b");
        r.done();
        let seen = r.read_until("event: done").await;
        assert!(seen.contains(r#""content":"b""#), "{seen}");
        assert!(!seen.contains("retry:"), "no other replica has its ids: {seen}");
        assert!(r.cursor.next_chunk().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_store_leaves_the_answer_live_then_catches_up() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        gate.fail(true);
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        r.send("b");
        r.read_until(r#""content":"b""#).await;
        assert_eq!(
            memory.meta(r.stream.id).await.map(|m| m.last_seq),
            Err(crate::store::StoreError::NotFound)
        );
        // Back: the writer creates the record and sends everything it missed.
        gate.fail(false);
        let id = r.stream.id;
        let mut caught_up = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if memory.meta(id).await.is_ok_and(|m| m.last_seq == 2) {
                caught_up = true;
                break;
            }
        }
        assert!(caught_up, "the store got the events it missed");
        // Staged again: the next event is shown once stored.
        gate.close();
        r.send("c");
        until(|| r.stream.log.last_seq() == 3 && gate.waiting() == 1).await;
        assert_eq!(r.stream.log.durable_seq(), 2);
        gate.open();
        r.read_until(r#""content":"c""#).await;
        r.done();
        r.read_until("event: done").await;
        let meta = memory.meta(id).await.expect("meta");
        assert_eq!(
            (meta.state, meta.last_seq),
            (StoreState::Finished(Outcome::Completed), 4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_the_store_lost_is_written_again_from_its_first_event() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        // The store goes away and comes back empty (a Redis restarted without persistence).
        gate.fail(true);
        r.send("b");
        r.read_until(r#""content":"b""#).await;
        let id = r.stream.id;
        memory.remove(id).await.expect("remove");
        gate.fail(false);
        let mut written = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if memory.meta(id).await.is_ok_and(|m| m.last_seq == 2) {
                written = true;
                break;
            }
        }
        assert!(written, "the store has the stream again");
        r.send("c");
        r.done();
        r.read_until("event: done").await;
        let meta = memory.meta(id).await.expect("meta");
        assert_eq!(
            (meta.state, meta.first_seq, meta.last_seq),
            (StoreState::Finished(Outcome::Completed), 1, 4)
        );
        assert_eq!(
            memory.read(id, 0, usize::MAX).await,
            Ok(r.stream.log.read_after(0, usize::MAX))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_ran_while_the_store_was_away_is_stored_when_it_ends_after() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        gate.fail(true);
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        // Back, and the answer ends before the writer's next try.
        gate.fail(false);
        r.done();
        r.read_until("event: done").await;
        assert!(r.cursor.next_chunk().await.is_none());
        let id = r.stream.id;
        let meta = memory.meta(id).await.expect("stored at its end");
        assert_eq!(
            (meta.state, meta.last_seq),
            (StoreState::Finished(Outcome::Completed), 2)
        );
        assert_eq!(
            memory.read(id, 0, usize::MAX).await,
            Ok(r.stream.log.read_after(0, usize::MAX))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lease_refresh_is_tried_again_at_the_next_tick() {
        let gate = Gate::new(memory_store());
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        // Shown once stored: the record is in the store, so its lease is refreshed from now on.
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        gate.fail(true);
        // The first refresh is due a third of the lease after the start.
        for _ in 0..40 {
            if gate.refreshes() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(gate.refreshes(), 1, "the first refresh, failed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A third of the 5 s lease would be 1.67 s: by then two failures could lapse the lease.
        assert!(gate.refreshes() >= 2, "{} refreshes", gate.refreshes());
        gate.fail(false);
        r.done();
        r.read_until("event: done").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_leaves_the_answer_live() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        gate.close();
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        r.send("a");
        until(|| r.stream.log.last_seq() == 1).await;
        let t0 = Instant::now();
        r.read_until(r#""content":"a""#).await;
        let waited = Instant::now() - t0;
        assert!(
            waited >= Duration::from_secs(1),
            "shown after the stall guard: {waited:?}"
        );
        assert!(waited <= Duration::from_millis(1500), "{waited:?}");
        r.send("b");
        r.read_until(r#""content":"b""#).await;
        // Once the store answers, it gets everything and the stream is staged again.
        gate.open();
        until(|| gate.appends() == [(1, 2)]).await;
        r.done();
        r.read_until("event: done").await;
        let meta = memory.meta(r.stream.id).await.expect("meta");
        assert_eq!(
            (meta.state, meta.last_seq),
            (StoreState::Finished(Outcome::Completed), 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_declared_lost_elsewhere_stops_reading() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        let mut r = start(gate.clone(), 1 << 20);
        r.cursor.next_chunk().await;
        r.send("a");
        r.read_until(r#""content":"a""#).await;
        // The store stops answering this reader until its lease lapses; another replica then
        // ends the stream as lost.
        gate.fail(true);
        while !memory.meta(r.stream.id).await.expect("meta").lease_expired {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        gate.fail(false);
        let lost = memory
            .finish(r.stream.id, Outcome::Lost, Batch::new(2, Vec::new()))
            .await;
        assert_eq!(lost, Ok(Outcome::Lost));
        r.send("b");
        let seen = r.read_until("event: error").await;
        assert!(seen.contains("\"code\":\"upstream_lost\""), "{seen}");
        assert!(r.cursor.next_chunk().await.is_none());
        until(|| r.tx.is_closed()).await;
        assert!(matches!(
            r.stream.state(),
            crate::stream::State::Finished(Outcome::Lost, _)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn events_dropped_before_the_store_had_them_end_its_copy_not_the_answer() {
        let memory = memory_store();
        let gate = Gate::new(memory.clone());
        gate.close();
        let mut r = start(gate.clone(), 400);
        r.cursor.next_chunk().await;
        for i in 0..10 {
            r.send(&format!("token-{i}-{}", "x".repeat(40)));
        }
        until(|| r.stream.log.last_seq() == 10).await;
        assert!(r.stream.log.first_seq() > 1, "the log bound dropped events");
        gate.open();
        let chunk = r.cursor.next_chunk().await.expect("chunk");
        assert!(String::from_utf8_lossy(&chunk).contains("\"code\":\"evicted\""));
        until(|| r.stream.log.durable_seq() == 10).await;
        let meta = memory.meta(r.stream.id).await.expect("meta");
        assert_eq!(meta.state, StoreState::Finished(Outcome::Error), "its copy ends");
        let terminal = meta.terminal.expect("terminal");
        assert!(String::from_utf8_lossy(&terminal).contains("evicted"));
        // The answer goes on here, live-only.
        r.send("late");
        until(|| r.stream.log.durable_seq() == 11).await;
        assert!(matches!(
            r.stream.log.read_after(10, 1 << 20),
            Read::Data { last: 11, .. }
        ));
    }

    fn running_stream() -> Arc<Stream> {
        let id = StreamId::random();
        let log = Arc::new(MemoryLog::new(id, 1 << 20, Arc::new(LogBudget::default())));
        Arc::new(Stream::new(id, "/r".into(), "m".into(), None, log))
    }

    #[test]
    fn a_reader_that_panics_still_ends_its_stream() {
        let stream = running_stream();
        stream.log.append(None, "partial");
        let s2 = stream.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _guard = EndGuard(s2, Arc::new(Metrics::noop()));
            panic!("a bug in the reader");
        }));
        assert!(panicked.is_err());
        assert!(matches!(
            stream.state(),
            crate::stream::State::Finished(Outcome::Error, _)
        ));
        let Read::Data { chunk, .. } = stream.log.read_after(1, 1 << 20) else {
            panic!("an error event was appended");
        };
        assert!(String::from_utf8_lossy(&chunk).contains("\"code\":\"internal\""));
        assert_eq!(stream.log.read_after(2, 1 << 20), Read::End);
        // A finished stream is left alone.
        drop(EndGuard(stream.clone(), Arc::new(Metrics::noop())));
        assert_eq!(stream.log.last_seq(), 2);
    }

    #[test]
    fn a_reader_dropped_by_the_runtime_ends_its_stream_with_shutdown() {
        let stream = running_stream();
        drop(EndGuard(stream.clone(), Arc::new(Metrics::noop())));
        assert!(matches!(
            stream.state(),
            crate::stream::State::Finished(Outcome::Shutdown, _)
        ));
        let Read::Data { chunk, .. } = stream.log.read_after(0, 1 << 20) else {
            panic!("an error event was appended");
        };
        assert!(String::from_utf8_lossy(&chunk).contains("\"code\":\"shutdown\""));
    }
}
