//! Soak test: the release proxy binary, in front of the demo's synthetic model, under a seeded random
//! mix of streams read to the end, cuts followed by resumes, second followers, owner cancels, limit
//! rejections and silent sockets. Every answer is checked against what the model is known to send
//! (`demo::answer_tokens` is deterministic per question) and every resumed answer against the
//! uninterrupted one; at the end the proxy's RSS, `/streams` and log are checked too.
//!
//! Run through `scripts/soak.sh [seconds]`, or by hand:
//! `cargo run --release --example soak -- --proxy target/release/sse-proxy --seconds 60`.
//! Options: `--seconds N` (60), `--seed N` (from the clock, printed), `--workers N` (16),
//! `--log FILE` (the proxy's log), `--no-silent-sockets` (leave silent sockets out of the mix).
//! Exits 1 when a check fails, 2 on bad arguments or when the proxy cannot be started.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sse_proxy::sse::Parser;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The soak's limits: small, so that rejections and timeouts really happen.
const MAX_STREAMS: usize = 16;
const MAX_STREAMS_PER_IDENTITY: usize = 4;
const MAX_FOLLOWERS: usize = 2;
const MAX_CONNECTIONS: usize = 96;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(1);
const RETENTION: Duration = Duration::from_secs(2);
const DETACH_GRACE: Duration = Duration::from_secs(3);
/// Longest one response head or one body frame may take before the run counts a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Distinct questions asked (the model answers each one the same way every time).
const QUESTIONS: u32 = 40;
/// Allowed RSS growth from the level after warm-up to the end.
const RSS_TOLERANCE: f64 = 0.20;

/// Command-line options.
struct Args {
    proxy: PathBuf,
    seconds: u64,
    seed: u64,
    workers: usize,
    log: PathBuf,
    silent_sockets: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        proxy: PathBuf::from("target/release/sse-proxy"),
        seconds: 60,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        workers: 16,
        log: std::env::temp_dir().join(format!("sse-proxy-soak-{}.log", std::process::id())),
        silent_sockets: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--proxy" => args.proxy = PathBuf::from(value()?),
            "--log" => args.log = PathBuf::from(value()?),
            "--seconds" => args.seconds = number(&flag, &value()?)?,
            "--seed" => args.seed = number(&flag, &value()?)?,
            "--workers" => args.workers = number(&flag, &value()?)?,
            "--no-silent-sockets" => args.silent_sockets = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.seconds == 0 || args.workers == 0 {
        return Err("--seconds and --workers must be above 0".into());
    }
    Ok(args)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: not a number: {v}"))
}

// ------------------------------------------------------------------------------------------
// Tally

/// What the run did and found; shared by all workers.
#[derive(Default)]
struct Tally {
    completed: AtomicU64,
    resumes: AtomicU64,
    followers: AtomicU64,
    cancels: AtomicU64,
    cancels_after_end: AtomicU64,
    rejected_streams: AtomicU64,
    rejected_followers: AtomicU64,
    silent_closed: AtomicU64,
    silent_open: AtomicU64,
    differences: AtomicU64,
    failures: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Tally {
    fn add(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn record(&self, p: Problem) {
        let (counter, text) = match p {
            Problem::Difference(t) => (&self.differences, format!("difference: {t}")),
            Problem::Failure(t) => (&self.failures, format!("failure: {t}")),
        };
        self.add(counter);
        self.note(text);
    }

    /// Keeps the first 20 notes for the report.
    fn note(&self, text: String) {
        if let Ok(mut notes) = self.notes.lock() {
            if notes.len() < 20 {
                notes.push(text);
            }
        }
    }
}

/// A content difference (the answer is wrong) or a failure (an unexpected status, a stall).
enum Problem {
    Difference(String),
    Failure(String),
}

fn fail<T>(why: impl Into<String>) -> Result<T, Problem> {
    Err(Problem::Failure(why.into()))
}

fn differ<T>(why: impl Into<String>) -> Result<T, Problem> {
    Err(Problem::Difference(why.into()))
}

// ------------------------------------------------------------------------------------------
// Client

/// One event as a browser sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ev {
    event: String,
    data: String,
    id: Option<String>,
}

impl Ev {
    fn seq(&self) -> Option<u64> {
        self.id.as_deref()?.rsplit_once(':')?.1.parse().ok()
    }

    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.data).ok()
    }
}

/// Reads the events of one response as they arrive; dropping it cuts the connection.
struct Events {
    body: Incoming,
    parser: Parser,
    ended: bool,
}

impl Events {
    fn new(body: Incoming) -> Self {
        Events {
            body,
            parser: Parser::new(1 << 24),
            ended: false,
        }
    }

    async fn next(&mut self) -> Result<Option<Ev>, Problem> {
        loop {
            if let Some(e) = self.parser.next_event() {
                return Ok(Some(Ev {
                    event: e.event.as_str().to_string(),
                    data: e.data.as_str().to_string(),
                    id: e.id.map(|i| i.as_str().to_string()),
                }));
            }
            if self.ended {
                return Ok(None);
            }
            let Ok(frame) = tokio::time::timeout(STEP_TIMEOUT, self.body.frame()).await else {
                return fail(format!("no data for {STEP_TIMEOUT:?}"));
            };
            match frame {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        if let Err(e) = self.parser.feed(d) {
                            return differ(format!("unparsable SSE: {e}"));
                        }
                    }
                }
                Some(Err(e)) => return fail(format!("body broke: {e}")),
                None => self.ended = true,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Result<Vec<Ev>, Problem> {
        let mut out = Vec::with_capacity(n.min(256));
        while out.len() < n {
            match self.next().await? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }

    async fn all(&mut self) -> Result<Vec<Ev>, Problem> {
        self.take(usize::MAX).await
    }
}

/// The answer to a stream request.
enum Opened {
    Stream { sid: String, events: Box<Events> },
    Rejected,
}

/// Everything a worker needs to talk to the proxy.
struct Ctx {
    proxy: SocketAddr,
    client: Client<HttpConnector, Empty<Bytes>>,
    tally: Arc<Tally>,
}

impl Ctx {
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<Incoming>, Problem> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match b.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return fail(format!("request {path}: {e}")),
        };
        match tokio::time::timeout(STEP_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => fail(format!("request {path}: {e}")),
            Err(_) => fail(format!("no response head for {path} within {STEP_TIMEOUT:?}")),
        }
    }

    /// A stream request; a 429 is checked, counted and waited out (its Retry-After).
    async fn open(&self, question: &str, who: &str, last_event_id: Option<&str>) -> Result<Opened, Problem> {
        let path = format!(
            "/api/question/stream?question={}&model=demo",
            form_urlencoded::byte_serialize(question.as_bytes()).collect::<String>()
        );
        let auth = format!("Bearer {who}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(id) = last_event_id {
            headers.push(("last-event-id", id));
        }
        let resp = self.request(http::Method::GET, &path, &headers).await?;
        match resp.status() {
            StatusCode::OK => {
                let Some(sid) = resp.headers().get("x-stream-id").and_then(|v| v.to_str().ok()) else {
                    return fail("a stream answer without X-Stream-Id");
                };
                Ok(Opened::Stream {
                    sid: sid.to_string(),
                    events: Box::new(Events::new(resp.into_body())),
                })
            }
            StatusCode::TOO_MANY_REQUESTS => self.rejected(resp).await,
            other => {
                let body = read_body(resp).await;
                fail(format!("stream request answered {other}: {body}"))
            }
        }
    }

    async fn rejected(&self, resp: http::Response<Incoming>) -> Result<Opened, Problem> {
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = read_body(resp).await;
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string));
        match code.as_deref() {
            Some("too_many_streams") => self.tally.add(&self.tally.rejected_streams),
            Some("too_many_followers") => self.tally.add(&self.tally.rejected_followers),
            _ => return fail(format!("429 without a too_many_* code: {body}")),
        }
        let Some(secs) = retry_after else {
            return fail("429 without Retry-After");
        };
        tokio::time::sleep(Duration::from_secs(secs.min(5))).await;
        Ok(Opened::Rejected)
    }

    async fn cancel(&self, sid: &str, who: &str) -> Result<StatusCode, Problem> {
        let auth = format!("Bearer {who}");
        let path = format!("/_sse-proxy/streams/{sid}/cancel");
        let resp = self
            .request(http::Method::POST, &path, &[("authorization", &auth)])
            .await?;
        let status = resp.status();
        read_body(resp).await;
        Ok(status)
    }
}

async fn read_body(resp: http::Response<Incoming>) -> String {
    match tokio::time::timeout(STEP_TIMEOUT, resp.into_body().collect()).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        _ => String::new(),
    }
}

// ------------------------------------------------------------------------------------------
// What the answers must be

/// The text the demo model sends for `question`.
fn expected(question: &str) -> String {
    sse_proxy::demo::answer_tokens(question).concat()
}

/// Ids `<stream>:first`, `first + 1`, … of one stream, no gap.
fn check_gapless(events: &[Ev], first: u64) -> Result<(), Problem> {
    let mut stream: Option<&str> = None;
    for (i, e) in events.iter().enumerate() {
        let want = first + i as u64;
        let Some((sid, _)) = e.id.as_deref().and_then(|id| id.rsplit_once(':')) else {
            return differ(format!("event {i} has no id: {e:?}"));
        };
        if e.seq() != Some(want) {
            return differ(format!("event {i} has id {:?}, wanted seq {want}", e.id));
        }
        if *stream.get_or_insert(sid) != sid {
            return differ(format!("event {i} belongs to another stream: {:?}", e.id));
        }
    }
    Ok(())
}

/// The concatenated `content` of the token batches.
fn text_of(events: &[Ev]) -> Result<String, Problem> {
    let mut text = String::new();
    for e in events.iter().filter(|e| e.event == "message") {
        match e.json().as_ref().and_then(|v| v["content"].as_str()) {
            Some(c) => text.push_str(c),
            None => return differ(format!("a token batch without content: {}", e.data)),
        }
    }
    Ok(text)
}

/// A whole answer: gapless, `thinking` first, the exact text, the model's `done` last.
fn check_answer(events: &[Ev], question: &str) -> Result<(), Problem> {
    check_gapless(events, 1)?;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return differ("an empty answer");
    };
    if last.event == "error" {
        return fail(format!("the answer ended with an error event: {}", last.data));
    }
    let status = |e: &Ev| e.json().and_then(|v| v["status"].as_str().map(str::to_string));
    if first.event != "thinking" || status(first).as_deref() != Some("thinking") {
        return differ(format!("the answer starts with {first:?}"));
    }
    if last.event != "done" || status(last).as_deref() != Some("complete") {
        return differ(format!("the answer ends with {last:?}"));
    }
    let text = text_of(events)?;
    if text != expected(question) {
        return differ(format!("the text of {question:?} differs: {text:?}"));
    }
    Ok(())
}

/// A stopped answer: gapless, a prefix of the model's text, `done` with `cancelled: true` last.
fn check_cancelled(events: &[Ev], question: &str) -> Result<(), Problem> {
    check_gapless(events, 1)?;
    let Some(last) = events.last() else {
        return differ("an empty answer");
    };
    let cancelled = last.json().is_some_and(|v| v["cancelled"] == true);
    if last.event != "done" || !cancelled {
        return differ(format!("a cancelled answer ends with {last:?}"));
    }
    let text = text_of(events)?;
    if !expected(question).starts_with(&text) {
        return differ(format!(
            "the stopped text of {question:?} is no prefix of the answer: {text:?}"
        ));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The mix

/// Reads a stream to its end.
async fn full(ctx: &Ctx, who: &str, q: &str) -> Result<(), Problem> {
    let Opened::Stream { mut events, .. } = ctx.open(q, who, None).await? else {
        return Ok(());
    };
    check_answer(&events.all().await?, q)?;
    ctx.tally.add(&ctx.tally.completed);
    Ok(())
}

/// Everything after `last_event_id`, retrying (a bounded number of times) while rejected.
async fn resume(ctx: &Ctx, who: &str, q: &str, last_event_id: &str) -> Result<Vec<Ev>, Problem> {
    for _ in 0..5 {
        if let Opened::Stream { mut events, .. } = ctx.open(q, who, Some(last_event_id)).await? {
            return events.all().await;
        }
    }
    fail(format!("resume from {last_event_id} rejected 5 times"))
}

/// Cuts after `k` events, resumes with Last-Event-ID, then compares with a replay of the whole log.
async fn cut_and_resume(ctx: &Ctx, who: &str, q: &str, k: usize) -> Result<(), Problem> {
    let Opened::Stream { sid, mut events } = ctx.open(q, who, None).await? else {
        return Ok(());
    };
    let mut got = events.take(k).await?;
    drop(events);
    let last = got
        .last()
        .and_then(|e| e.id.clone())
        .unwrap_or(format!("{sid}:0"));
    if got.last().is_none_or(|e| e.event != "done") {
        got.extend(resume(ctx, who, q, &last).await?);
        ctx.tally.add(&ctx.tally.resumes);
    }
    check_answer(&got, q)?;
    ctx.tally.add(&ctx.tally.completed);
    let replay = resume(ctx, who, q, &format!("{sid}:0")).await?;
    if replay != got {
        return differ(format!(
            "stream {sid}: the resumed answer differs from the uninterrupted log"
        ));
    }
    Ok(())
}

/// A second follower joins from the start, is cut and resumes; a third one is over the limit.
async fn followers(ctx: &Ctx, who: &str, q: &str, k1: usize, k2: usize) -> Result<(), Problem> {
    let Opened::Stream { sid, events: mut a } = ctx.open(q, who, None).await? else {
        return Ok(());
    };
    let mut a_events = a.take(k1).await?;
    let from_start = format!("{sid}:0");
    let Opened::Stream { events: mut b, .. } = ctx.open(q, who, Some(&from_start)).await? else {
        return fail(format!("stream {sid}: a second follower was rejected"));
    };
    ctx.tally.add(&ctx.tally.followers);
    // Two followers are attached: a third is over max_followers unless the answer just ended.
    if let Opened::Stream { events: mut c, .. } = ctx.open(q, who, Some(&from_start)).await? {
        check_answer(&c.all().await?, q)?;
        ctx.tally.add(&ctx.tally.completed);
    }
    let mut b_events = b.take(k2).await?;
    drop(b);
    if b_events.last().is_none_or(|e| e.event != "done") {
        let last = b_events.last().and_then(|e| e.id.clone()).unwrap_or(from_start);
        b_events.extend(resume(ctx, who, q, &last).await?);
        ctx.tally.add(&ctx.tally.resumes);
    }
    a_events.extend(a.all().await?);
    check_answer(&a_events, q)?;
    ctx.tally.add(&ctx.tally.completed);
    if a_events != b_events {
        return differ(format!(
            "stream {sid}: the resumed follower differs from the uninterrupted one"
        ));
    }
    Ok(())
}

/// The owner presses Stop after `k` events (a stranger's Stop must not be found).
async fn cancel(ctx: &Ctx, who: &str, q: &str, k: usize) -> Result<(), Problem> {
    let Opened::Stream { sid, mut events } = ctx.open(q, who, None).await? else {
        return Ok(());
    };
    let mut got = events.take(k).await?;
    let stranger = ctx.cancel(&sid, "soak-stranger").await?;
    if stranger != StatusCode::NOT_FOUND {
        return fail(format!("stream {sid}: a stranger's cancel answered {stranger}"));
    }
    let status = ctx.cancel(&sid, who).await?;
    got.extend(events.all().await?);
    match status {
        StatusCode::ACCEPTED => {
            check_cancelled(&got, q)?;
            ctx.tally.add(&ctx.tally.cancels);
        }
        StatusCode::CONFLICT => {
            check_answer(&got, q)?;
            ctx.tally.add(&ctx.tally.cancels_after_end);
            ctx.tally.add(&ctx.tally.completed);
        }
        other => return fail(format!("stream {sid}: the owner's cancel answered {other}")),
    }
    Ok(())
}

/// More streams at once than one identity may run: the excess gets 429.
async fn burst(ctx: &Arc<Ctx>, who: &str, q: &str) -> Result<(), Problem> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..MAX_STREAMS_PER_IDENTITY + 2 {
        let (ctx, who, q) = (ctx.clone(), who.to_string(), q.to_string());
        set.spawn(async move { ctx.open(&q, &who, None).await });
    }
    let mut accepted = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(Opened::Stream { events, .. })) => accepted.push(events),
            Ok(Ok(Opened::Rejected)) => {}
            Ok(Err(p)) => ctx.tally.record(p),
            Err(e) => return fail(format!("a burst request task failed: {e}")),
        }
    }
    if accepted.len() > MAX_STREAMS_PER_IDENTITY {
        return fail(format!(
            "{} streams of one identity accepted at once (max_streams_per_identity = {MAX_STREAMS_PER_IDENTITY})",
            accepted.len()
        ));
    }
    for mut events in accepted {
        check_answer(&events.all().await?, q)?;
        ctx.tally.add(&ctx.tally.completed);
    }
    Ok(())
}

/// Connects and sends nothing, half a request head, or half the h2 preface: the proxy must close
/// the socket within `server.header_read_timeout` (a few seconds of slack allowed).
async fn silent_socket(ctx: &Ctx, kind: u32) -> Result<(), Problem> {
    let Ok(Ok(mut s)) = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(ctx.proxy)).await else {
        return fail("connect for a silent socket failed");
    };
    let partial: &[u8] = match kind {
        0 => b"",
        1 => b"GET /api/question/stream?question=x HTTP/1.1\r\nHost: soak\r\n",
        _ => b"PRI * HTTP/2.0\r\n",
    };
    if !partial.is_empty() && s.write_all(partial).await.is_err() {
        ctx.tally.add(&ctx.tally.silent_closed);
        return Ok(());
    }
    let deadline = Instant::now() + HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                ctx.tally.add(&ctx.tally.silent_closed);
                return Ok(());
            }
            Ok(Ok(_)) => {} // a 408 or a GOAWAY before the close is fine
            Err(_) => {
                ctx.tally.add(&ctx.tally.silent_open);
                ctx.tally.note(format!(
                    "a silent socket ({}) was still open {:?} after connecting",
                    ["no byte", "half a request head", "half the h2 preface"][kind.min(2) as usize],
                    HEADER_READ_TIMEOUT + Duration::from_secs(3)
                ));
                return Ok(());
            }
        }
    }
}

/// One worker: seeded random actions until `end`.
async fn worker(ctx: Arc<Ctx>, n: usize, seed: u64, end: Instant, silent: bool) {
    let mut rng = StdRng::seed_from_u64(seed ^ (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let who = format!("soak-{n}");
    while Instant::now() < end {
        let q = format!("soak question {}", rng.gen_range(0..QUESTIONS));
        let r = match rng.gen_range(0..100u32) {
            // An answer is about 50 events: cuts and Stops fall inside it.
            0..=24 => full(&ctx, &who, &q).await,
            25..=49 => cut_and_resume(&ctx, &who, &q, rng.gen_range(1..45)).await,
            50..=64 => followers(&ctx, &who, &q, rng.gen_range(1..20), rng.gen_range(1..40)).await,
            65..=79 => cancel(&ctx, &who, &q, rng.gen_range(1..30)).await,
            80..=89 => burst(&ctx, &who, &q).await,
            _ if silent => silent_socket(&ctx, rng.gen_range(0..3)).await,
            _ => full(&ctx, &who, &q).await,
        };
        if let Err(p) = r {
            ctx.tally.record(p);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The proxy process

/// The release proxy as a child process; killed on drop.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The soak's config: the demo model upstream, small limits, short retention and timeouts.
fn config_text(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"
header_read_timeout = "{hrt}ms"
body_read_timeout = "2s"
max_connections = {MAX_CONNECTIONS}

[upstream]
url = "http://{upstream}"
connect_timeout = "2s"
response_timeout = "10s"
idle_timeout = "10s"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
model_from = "query:model"

[resume]
detach_grace = "{dg}ms"
retention = "{ret}ms"

[identity]
from = "header:authorization"

[limits]
max_streams = {MAX_STREAMS}
max_streams_per_identity = {MAX_STREAMS_PER_IDENTITY}
max_followers = {MAX_FOLLOWERS}
retry_after = "1s"

[[progress.model]]
name = "demo"
expected_tokens = 150
tokens_per_second = 40.0
"#,
        hrt = HEADER_READ_TIMEOUT.as_millis(),
        dg = DETACH_GRACE.as_millis(),
        ret = RETENTION.as_millis(),
    )
}

/// Starts the proxy with `config` and waits for its `{"listening":..,"admin":..}` line.
fn start_proxy(bin: &PathBuf, config: &PathBuf, log: &PathBuf) -> Result<Proxy, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let Some(out) = child.stdout.take() else {
        return Err("no stdout pipe".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| format!("the proxy printed no address line; see {}", log.display()))?;
    let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))?;
    let addr = |k: &str| {
        v[k].as_str()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| format!("no {k} address in {line}"))
    };
    let (addr, admin) = (addr("listening")?, addr("admin")?);
    Ok(Proxy { child, addr, admin })
}

/// SIGTERM, then the exit status within `within` (killed after that).
fn stop_proxy(mut p: Proxy, within: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(p.child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(st)) = p.child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the proxy's RSS every 500 ms (seconds since start, KiB) until `stop`.
async fn sample_rss(pid: u32, start: Instant, stop: CancellationToken) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return samples,
            _ = tick.tick() => {
                if let Some(kib) = rss_kib(pid) {
                    samples.push((start.elapsed().as_secs_f64(), kib));
                }
            }
        }
    }
}

/// Streams `/streams` still lists, polled until none is left or `within` passes.
async fn streams_left(
    client: &Client<HttpConnector, Empty<Bytes>>,
    admin: SocketAddr,
    within: Duration,
) -> (usize, Duration) {
    let start = Instant::now();
    let mut left = usize::MAX;
    while start.elapsed() < within {
        if let Ok(uri) = format!("http://{admin}/streams").parse::<http::Uri>() {
            if let Ok(Ok(resp)) = tokio::time::timeout(STEP_TIMEOUT, client.get(uri)).await {
                let body = read_body(resp).await;
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    left = v["streams"].as_array().map_or(usize::MAX, Vec::len);
                    if left == 0 && v["running"] == 0 {
                        return (0, start.elapsed());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (left, start.elapsed())
}

// ------------------------------------------------------------------------------------------
// Main

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    println!(
        "soak: seed {} ({} s, {} workers, silent sockets {}); proxy {}; log {}",
        args.seed,
        args.seconds,
        args.workers,
        if args.silent_sockets { "on" } else { "off" },
        args.proxy.display(),
        args.log.display()
    );
    let stop_backend = CancellationToken::new();
    let backend = match sse_proxy::demo::start_backend(stop_backend.clone()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: cannot start the demo model: {e}");
            return ExitCode::from(2);
        }
    };
    let config = std::env::temp_dir().join(format!("sse-proxy-soak-{}.toml", std::process::id()));
    if let Err(e) = std::fs::write(&config, config_text(backend)) {
        eprintln!("soak: write {}: {e}", config.display());
        return ExitCode::from(2);
    }
    let proxy = match start_proxy(&args.proxy, &config, &args.log) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let _ = std::fs::remove_file(&config);
    let pid = proxy.child.id();
    // The proxy closes a keep-alive connection idle for header_read_timeout: a client reusing one
    // just then races the close, so idle connections are dropped well before.
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(HEADER_READ_TIMEOUT / 2)
        .build_http::<Empty<Bytes>>();
    let ctx = Arc::new(Ctx {
        proxy: proxy.addr,
        client: client.clone(),
        tally: Arc::new(Tally::default()),
    });

    let start = Instant::now();
    let stop_sampling = CancellationToken::new();
    let sampler = tokio::spawn(sample_rss(pid, start, stop_sampling.clone()));
    let end = start + Duration::from_secs(args.seconds);
    let workers: Vec<_> = (0..args.workers)
        .map(|n| tokio::spawn(worker(ctx.clone(), n, args.seed, end, args.silent_sockets)))
        .collect();
    for w in workers {
        if let Err(e) = w.await {
            ctx.tally
                .record(Problem::Failure(format!("a worker failed: {e}")));
        }
    }
    let load_secs = start.elapsed().as_secs_f64();
    let (left, waited) = streams_left(
        &client,
        proxy.admin,
        RETENTION + DETACH_GRACE + Duration::from_secs(15),
    )
    .await;
    let end_rss = rss_kib(pid);
    stop_sampling.cancel();
    let samples = sampler.await.unwrap_or_default();
    let exit = tokio::task::spawn_blocking(move || stop_proxy(proxy, Duration::from_secs(15)))
        .await
        .ok()
        .flatten();
    stop_backend.cancel();
    let log = std::fs::read_to_string(&args.log).unwrap_or_default();
    let panics = log.matches("panicked").count();

    let report = Report {
        args: &args,
        tally: &ctx.tally,
        samples: &samples,
        end_rss,
        load_secs,
        streams_left: left,
        waited,
        panics,
        exit,
    };
    let problems = report.print();
    if problems.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAIL: {}", problems.join("; "));
        ExitCode::from(1)
    }
}

/// The figures of one run and the checks on them.
struct Report<'a> {
    args: &'a Args,
    tally: &'a Tally,
    samples: &'a [(f64, u64)],
    end_rss: Option<u64>,
    load_secs: f64,
    streams_left: usize,
    waited: Duration,
    panics: usize,
    exit: Option<std::process::ExitStatus>,
}

impl Report<'_> {
    /// RSS after warm-up: the highest sample in the 3 s before a quarter of the run (at least 5 s).
    fn warm_rss(&self) -> Option<(f64, u64)> {
        let at = (self.args.seconds as f64 / 4.0)
            .max(5.0)
            .min(self.args.seconds as f64);
        let kib = self
            .samples
            .iter()
            .filter(|(t, _)| *t <= at && *t > at - 3.0)
            .map(|s| s.1)
            .max()?;
        Some((at, kib))
    }

    /// Prints the figures; returns the failed checks.
    fn print(&self) -> Vec<String> {
        let t = self.tally;
        let n = Tally::get;
        let mib = |k: u64| k as f64 / 1024.0;
        let mut problems = Vec::new();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "soak figures (seed {}, load {:.1} s):",
            self.args.seed, self.load_secs
        );
        let _ = writeln!(out, "  answers verified     {}", n(&t.completed));
        let _ = writeln!(out, "  resumes              {}", n(&t.resumes));
        let _ = writeln!(out, "  second followers     {}", n(&t.followers));
        let _ = writeln!(
            out,
            "  cancels              {} (202), {} more after the answer had ended (409)",
            n(&t.cancels),
            n(&t.cancels_after_end)
        );
        let _ = writeln!(
            out,
            "  rejections (429)     {} too_many_streams, {} too_many_followers",
            n(&t.rejected_streams),
            n(&t.rejected_followers)
        );
        if self.args.silent_sockets {
            let _ = writeln!(
                out,
                "  silent sockets       {} closed by the proxy, {} left open",
                n(&t.silent_closed),
                n(&t.silent_open)
            );
        } else {
            let _ = writeln!(out, "  silent sockets       not in the mix (--no-silent-sockets)");
        }
        let _ = writeln!(out, "  content differences  {}", n(&t.differences));
        let _ = writeln!(out, "  other failures       {}", n(&t.failures));
        let peak = self.samples.iter().map(|s| s.1).max();
        match (self.warm_rss(), self.end_rss) {
            (Some((at, warm)), Some(end)) => {
                let growth = end as f64 / warm as f64 - 1.0;
                let _ = writeln!(
                    out,
                    "  proxy RSS            {:.1} MiB after warm-up ({at:.0} s), {:.1} MiB at the end ({:+.1}%), peak {:.1} MiB, {} samples",
                    mib(warm),
                    mib(end),
                    growth * 100.0,
                    mib(peak.unwrap_or(0)),
                    self.samples.len()
                );
                if growth > RSS_TOLERANCE {
                    problems.push(format!("RSS grew {:.1}% after warm-up", growth * 100.0));
                }
            }
            _ => problems.push("the proxy's RSS could not be sampled".into()),
        }
        let _ = writeln!(
            out,
            "  /streams             {} left, {:.1} s after the load (retention {RETENTION:?})",
            if self.streams_left == usize::MAX {
                "?".to_string()
            } else {
                self.streams_left.to_string()
            },
            self.waited.as_secs_f64()
        );
        let _ = writeln!(out, "  panics in the log    {}", self.panics);
        let _ = writeln!(out, "  proxy exit           {:?}", self.exit);
        print!("{out}");
        if let Ok(notes) = t.notes.lock() {
            for note in notes.iter() {
                println!("  - {note}");
            }
        }

        let checks = [
            (n(&t.differences) == 0, "content differences"),
            (n(&t.failures) == 0, "failures"),
            (self.panics == 0, "panics in the proxy's log"),
            (self.streams_left == 0, "/streams not empty after retention"),
            (
                self.exit.is_some_and(|s| s.success()),
                "the proxy did not exit cleanly on SIGTERM",
            ),
            (n(&t.completed) > 0, "no answer verified"),
            (n(&t.resumes) > 0, "no resume"),
            (n(&t.followers) > 0, "no second follower"),
            (n(&t.cancels) > 0, "no cancel"),
            (
                n(&t.rejected_streams) + n(&t.rejected_followers) > 0,
                "no rejection",
            ),
            (n(&t.silent_open) == 0, "silent sockets left open"),
            (
                !self.args.silent_sockets || n(&t.silent_closed) > 0,
                "no silent socket closed",
            ),
        ];
        problems.extend(checks.iter().filter(|c| !c.0).map(|c| c.1.to_string()));
        problems
    }
}
