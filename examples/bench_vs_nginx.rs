//! Same-run benchmark: the same token-emitting upstream and the same client, measured directly,
//! through nginx (`proxy_buffering off`, one worker, upstream keepalive) and through sse-proxy (the
//! release binary, the shipped `proxy.toml` with `limits.max_streams`/`max_streams_per_identity`
//! raised), one preset after another in one run. Each server is started fresh for each preset, so its
//! peak RSS (`VmHWM`) belongs to that preset; its CPU is `utime + stime` from `/proc/<pid>/stat`
//! (nginx: master + worker) over the load, divided by the upstream tokens sent.
//!
//! Run through `scripts/bench-vs-nginx.sh [preset...]`, or by hand:
//! `bench_vs_nginx run --proxy target/release/sse-proxy [--nginx /usr/sbin/nginx] [--perf FILE]
//! [preset...]`. Presets: `fast` (1 client, 3,000 answers × 20 tokens one after another, as fast as the upstream
//! writes), `c50` (50 concurrent, 100 tokens at 50 tok/s), `c500` (500 concurrent, 200 tokens at
//! 50 tok/s), `c8000` (8,000 concurrent, 100 tokens at 5 tok/s) and `resume` (replaying a
//! 2,000-event log to a resuming client). Without presets: all of them.
//! `--baseline PATH` measures a second sse-proxy binary too (before/after a change, in one run).
//! `--perf FILE` records `perf record -g` of the proxy during each preset's load into FILE.<preset>.
//! `bench_vs_nginx upstream [--listen ADDR]` runs the token emitter alone.
//!
//! The emitter answers any path; the query sets the answer: `tokens=N` (100), `rate=R` tokens per
//! second (0: as fast as it can write), `jitter=J` (0.2: each gap is the mean ±J), `kind=message`
//! (tokens as `data:` events) or `kind=step` (as `event: step`, which the proxy passes through one
//! to one). Framing as sse-starlette writes it: CRLF line ends, a `: ping` comment every 15 s,
//! `event: done` at the end.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// sse-starlette's default ping interval.
const PING_EVERY: Duration = Duration::from_secs(15);
/// Longest one answer may take before the run counts it as failed.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// Events in the log the `resume` preset replays.
const RESUME_EVENTS: usize = 2_000;
/// Resumes the `resume` preset measures.
const RESUME_ROUNDS: usize = 100;

/// One load: `concurrency` clients, each asking `rounds` answers one after another.
#[derive(Clone, Copy)]
struct Preset {
    name: &'static str,
    label: &'static str,
    concurrency: usize,
    rounds: usize,
    tokens: usize,
    rate: f64,
}

const PRESETS: [Preset; 4] = [
    Preset {
        name: "fast",
        // The 300 answers, ten times over: /proc counts CPU in 10 ms ticks.
        label: "1 client, 3,000 answers × 20 tokens, fast",
        concurrency: 1,
        rounds: 3000,
        tokens: 20,
        rate: 0.0,
    },
    Preset {
        name: "c50",
        label: "50 concurrent, 100 tokens @ 50 tok/s",
        concurrency: 50,
        rounds: 4,
        tokens: 100,
        rate: 50.0,
    },
    Preset {
        name: "c500",
        label: "500 concurrent, 200 tokens @ 50 tok/s",
        concurrency: 500,
        rounds: 2,
        tokens: 200,
        rate: 50.0,
    },
    Preset {
        name: "c8000",
        label: "8,000 concurrent, 100 tokens @ 5 tok/s",
        concurrency: 8000,
        rounds: 1,
        tokens: 100,
        rate: 5.0,
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("upstream") => rt.block_on(upstream_main(&args[1..])),
        Some("run") => rt.block_on(run_main(&args[1..])),
        _ => Err(
            "usage: bench_vs_nginx upstream [--listen ADDR] | run --proxy PATH [--nginx PATH] \
                  [--perf FILE] [fast|c50|c500|c8000|resume ...]"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The token emitter.

/// The answer a query asks for.
struct AnswerSpec {
    tokens: usize,
    rate: f64,
    jitter: f64,
    step: bool,
}

impl AnswerSpec {
    fn from_query(query: Option<&str>) -> AnswerSpec {
        let mut spec = AnswerSpec {
            tokens: 100,
            rate: 0.0,
            jitter: 0.2,
            step: false,
        };
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "tokens" => spec.tokens = v.parse().unwrap_or(spec.tokens),
                "rate" => spec.rate = v.parse().unwrap_or(spec.rate),
                "jitter" => spec.jitter = v.parse::<f64>().unwrap_or(spec.jitter).clamp(0.0, 1.0),
                "kind" => spec.step = v == "step",
                _ => {}
            }
        }
        spec
    }
}

/// The text of token `i`; the client checks the concatenation.
fn token_text(i: usize) -> String {
    format!(" t{i}")
}

/// The concatenated text of an answer of `tokens` tokens.
fn answer_text(tokens: usize) -> String {
    (0..tokens).map(token_text).collect()
}

/// State of one answer being emitted.
struct Emitting {
    spec: AnswerSpec,
    next: usize,
    due: tokio::time::Instant,
    last_ping: tokio::time::Instant,
    rng: StdRng,
}

/// The next frame of an answer: a token (after its gap), a ping when due, `done`, then the end.
async fn emit(mut st: Emitting) -> Option<(Result<Frame<Bytes>, Infallible>, Emitting)> {
    if st.next > st.spec.tokens {
        return None;
    }
    if st.spec.rate > 0.0 && st.next > 0 && st.next < st.spec.tokens {
        tokio::time::sleep_until(st.due).await;
    }
    let mut out = String::with_capacity(64);
    let now = tokio::time::Instant::now();
    if now.duration_since(st.last_ping) >= PING_EVERY {
        let _ = write!(out, ": ping - {:?}\r\n\r\n", std::time::SystemTime::now());
        st.last_ping = now;
    }
    if st.next == st.spec.tokens {
        out.push_str("event: done\r\ndata: {\"status\":\"complete\"}\r\n\r\n");
    } else {
        if st.spec.step {
            out.push_str("event: step\r\n");
        }
        let _ = write!(out, "data: {{\"content\": \"{}\"}}\r\n\r\n", token_text(st.next));
        if st.spec.rate > 0.0 {
            let gap = 1.0 / st.spec.rate * (1.0 + st.spec.jitter * st.rng.gen_range(-1.0..=1.0));
            st.due += Duration::from_secs_f64(gap.max(0.0));
        }
    }
    st.next += 1;
    Some((Ok(Frame::data(Bytes::from(out))), st))
}

/// Serves answers on `listener` until the process ends.
async fn serve_upstream(listener: tokio::net::TcpListener) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("upstream: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let spec = AnswerSpec::from_query(req.uri().query());
            let now = tokio::time::Instant::now();
            let st = Emitting {
                spec,
                next: 0,
                due: now,
                last_ping: now,
                rng: StdRng::from_entropy(),
            };
            let mut resp = Response::new(StreamBody::new(futures_util::stream::unfold(st, emit)));
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream; charset=utf-8"),
            );
            h.insert("cache-control", http::HeaderValue::from_static("no-store"));
            h.insert("x-accel-buffering", http::HeaderValue::from_static("no"));
            Ok::<_, Infallible>(resp)
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn upstream_main(args: &[String]) -> Result<(), String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => {
                listen = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--listen needs an address such as 127.0.0.1:8000")?
            }
            other => return Err(format!("unknown upstream option '{other}'")),
        }
    }
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.set_reuseaddr(true).map_err(|e| e.to_string())?;
    sock.bind(listen)
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let listener = sock.listen(4096).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{{\"listening\":\"{addr}\"}}");
    serve_upstream(listener).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client.

/// What one answer showed the client.
#[derive(Default)]
struct Answer {
    ttft: Option<Duration>,
    first_byte: Option<Duration>,
    total: Duration,
    events: u64,
    bytes: u64,
    text: String,
    done: bool,
    error: Option<String>,
    stream_id: Option<String>,
}

/// An incremental SSE reader: counts events and collects the `content` of token events.
#[derive(Default)]
struct SseReader {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseReader {
    fn feed(&mut self, chunk: &[u8], answer: &mut Answer, t0: Instant) {
        for &b in chunk {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let line = std::mem::take(&mut self.line);
            if line.is_empty() {
                self.dispatch(answer, t0);
            } else if line[0] != b':' {
                let s = String::from_utf8_lossy(&line);
                let (field, value) = s
                    .split_once(':')
                    .map_or((&*s, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
                match field {
                    "event" => self.event = value.to_string(),
                    "data" => {
                        self.has_data = true;
                        if !self.data.is_empty() {
                            self.data.push('\n');
                        }
                        self.data.push_str(value);
                    }
                    _ => {}
                }
            }
        }
    }

    fn dispatch(&mut self, answer: &mut Answer, t0: Instant) {
        let event = std::mem::take(&mut self.event);
        // As EventSource: a record without data (`retry:` alone) dispatches nothing.
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        let data = std::mem::take(&mut self.data);
        answer.events += 1;
        match event.as_str() {
            "" | "message" | "step" => {
                let content = serde_json::from_str::<serde_json::Value>(&data)
                    .ok()
                    .and_then(|v| v.get("content").and_then(|c| c.as_str()).map(str::to_string));
                match content {
                    Some(c) => {
                        if answer.ttft.is_none() && !c.is_empty() {
                            answer.ttft = Some(t0.elapsed());
                        }
                        answer.text.push_str(&c);
                    }
                    None if event != "message" && !event.is_empty() => {}
                    None => answer.error = Some(format!("token event without content: {data}")),
                }
            }
            "done" => answer.done = true,
            "error" => answer.error = Some(format!("error event: {data}")),
            _ => {}
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// Opens an HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Asks one answer on `sender` and reads it to its end; times count from `t0`.
async fn ask(sender: &mut Sender, path: &str, last_event_id: Option<&str>, t0: Instant) -> Answer {
    let mut answer = Answer::default();
    let read = async {
        sender.ready().await.map_err(|e| format!("connection: {e}"))?;
        let mut req = Request::get(path)
            .header("host", "bench")
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        answer.stream_id = resp
            .headers()
            .get("x-stream-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = resp.into_body();
        let mut reader = SseReader::default();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                answer.first_byte.get_or_insert_with(|| t0.elapsed());
                answer.bytes += data.len() as u64;
                reader.feed(data, &mut answer, t0);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, read).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => answer.error = Some(e),
        Err(_) => answer.error = Some("timed out".into()),
    }
    answer.total = t0.elapsed();
    answer
}

/// What a load showed the clients.
#[derive(Default)]
struct LoadResult {
    ttft_ms: Vec<f64>,
    ok: usize,
    failed: usize,
    first_failure: Option<String>,
    events: u64,
    bytes: u64,
}

/// Runs `preset` against `addr`: every client connects and asks its answers one after another.
async fn run_load(addr: SocketAddr, preset: &Preset) -> LoadResult {
    let path = format!(
        "/api/question/stream?model=llama3&tokens={}&rate={}&jitter=0.2",
        preset.tokens, preset.rate
    );
    let expected = std::sync::Arc::new(answer_text(preset.tokens));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..preset.concurrency {
        let (path, expected, rounds) = (path.clone(), expected.clone(), preset.rounds);
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(rounds);
            let t0 = Instant::now();
            let mut sender = match connect(addr).await {
                Ok(s) => s,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            };
            for round in 0..rounds {
                let t = if round == 0 { t0 } else { Instant::now() };
                let mut a = ask(&mut sender, &path, None, t).await;
                if a.error.is_none() && a.text != *expected {
                    a.error = Some(format!(
                        "wrong text: {} bytes instead of {}",
                        a.text.len(),
                        expected.len()
                    ));
                }
                if a.error.is_none() && !a.done {
                    a.error = Some("no done event".into());
                }
                if a.error.is_some() && !sender.is_ready() {
                    if let Ok(s) = connect(addr).await {
                        sender = s;
                    }
                }
                out.push(Ok(a));
            }
            out
        });
    }
    let mut res = LoadResult::default();
    while let Some(joined) = tasks.join_next().await {
        for a in joined.unwrap_or_else(|e| vec![Err(format!("client task: {e}"))]) {
            match a {
                Ok(a) if a.error.is_none() => {
                    res.ok += 1;
                    res.events += a.events;
                    res.bytes += a.bytes;
                    if let Some(t) = a.ttft {
                        res.ttft_ms.push(t.as_secs_f64() * 1e3);
                    }
                }
                Ok(a) => {
                    res.failed += 1;
                    res.first_failure.get_or_insert(a.error.unwrap_or_default());
                }
                Err(e) => {
                    res.failed += 1;
                    res.first_failure.get_or_insert(e);
                }
            }
        }
    }
    res
}

// ---------------------------------------------------------------------------------------------
// /proc figures.

/// Clock ticks per second of `utime`/`stime`.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `utime + stime` of a process in ticks (all its threads).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A `kB` field of `/proc/<pid>/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The machine's 1-minute load average (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// The children of a process (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// The soft limit on open files of this process (the servers it starts inherit it).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

// ---------------------------------------------------------------------------------------------
// The servers under test.

/// A server the load runs against: its address, and the processes whose CPU and memory count.
struct Server {
    addr: SocketAddr,
    child: Option<Child>,
    nginx: bool,
}

impl Server {
    fn pids(&self) -> Vec<u32> {
        match &self.child {
            None => vec![],
            Some(c) if self.nginx => std::iter::once(c.id()).chain(children(c.id())).collect(),
            Some(c) => vec![c.id()],
        }
    }

    fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            if self.nginx {
                // SIGKILL would leave the worker running.
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            } else {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// A free port on 127.0.0.1 (nginx binds it itself).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Reads the `{"listening": ...}` line a child prints first.
fn listening_line(child: &mut Child, what: &str) -> Result<SocketAddr, String> {
    let out = child.stdout.take().ok_or_else(|| format!("{what}: no stdout"))?;
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .map_err(|e| format!("{what}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("{what} printed {line:?}: {e}"))?;
    v["listening"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{what} printed no listening address: {line:?}"))
}

/// Starts the token emitter as a child process (this program, `upstream`).
fn start_upstream() -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("upstream")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the upstream: {e}"))?;
    let addr = listening_line(&mut child, "upstream")?;
    Ok((child, addr))
}

/// Starts sse-proxy with the shipped `proxy.toml`, limits raised, in front of `upstream`.
fn start_proxy(bin: &Path, dir: &Path, upstream: SocketAddr) -> Result<Server, String> {
    let mut cfg: toml::Table = include_str!("../proxy.toml")
        .parse()
        .map_err(|e| format!("proxy.toml: {e}"))?;
    let set = |cfg: &mut toml::Table, table: &str, key: &str, v: toml::Value| {
        if let Some(t) = cfg.get_mut(table).and_then(|t| t.as_table_mut()) {
            t.insert(key.into(), v);
        }
    };
    set(&mut cfg, "server", "listen", "127.0.0.1:0".into());
    set(&mut cfg, "server", "admin_listen", "127.0.0.1:0".into());
    set(&mut cfg, "upstream", "url", format!("http://{upstream}").into());
    set(&mut cfg, "limits", "max_streams", toml::Value::Integer(100_000));
    set(
        &mut cfg,
        "limits",
        "max_streams_per_identity",
        toml::Value::Integer(100_000),
    );
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml::to_string(&cfg).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let addr = listening_line(&mut child, "sse-proxy")?;
    Ok(Server {
        addr,
        child: Some(child),
        nginx: false,
    })
}

/// Starts nginx: one worker, `proxy_buffering off`, upstream keepalive, a config in `dir`.
fn start_nginx(bin: &Path, dir: &Path, upstream: SocketAddr, nofile: u64) -> Result<Server, String> {
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\n\
         worker_rlimit_nofile {nofile};\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections {conns}; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           keepalive_requests 100000;\n\
           upstream backend {{ server {upstream}; keepalive 1024; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://backend;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_buffering off;\n\
               proxy_read_timeout 1h;\n\
             }}\n\
           }}\n\
         }}\n",
        conns = nofile.saturating_sub(64).max(1024),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let server = Server {
        addr: ([127, 0, 0, 1], port).into(),
        child: Some(child),
        nginx: true,
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(server.addr).is_err() || server.pids().len() < 2 {
        if started.elapsed() > Duration::from_secs(10) {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            server.stop();
            return Err(format!("nginx did not start listening on port {port}: {log}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

// ---------------------------------------------------------------------------------------------
// The runner.

/// One target's figures for one preset.
struct Row {
    target: &'static str,
    load: LoadResult,
    tokens: u64,
    cpu_us_per_token: Option<f64>,
    hwm_mib: Option<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Options of `run`.
struct RunArgs {
    proxy: PathBuf,
    /// A second sse-proxy binary measured in the same run (before/after a change).
    baseline: Option<PathBuf>,
    nginx: Option<PathBuf>,
    perf: Option<PathBuf>,
    presets: Vec<String>,
}

fn parse_run_args(args: &[String]) -> Result<RunArgs, String> {
    let mut out = RunArgs {
        proxy: PathBuf::new(),
        baseline: None,
        nginx: None,
        perf: None,
        presets: vec![],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--proxy" => out.proxy = value("--proxy")?.into(),
            "--nginx" => out.nginx = Some(value("--nginx")?.into()),
            "--baseline" => out.baseline = Some(value("--baseline")?.into()),
            "--perf" => out.perf = Some(value("--perf")?.into()),
            p if PRESETS.iter().any(|x| x.name == p) || p == "resume" => out.presets.push(p.to_string()),
            other => {
                return Err(format!(
                    "unknown option or preset '{other}' (presets: fast c50 c500 c8000 resume)"
                ))
            }
        }
    }
    if out.proxy.as_os_str().is_empty() {
        return Err("--proxy PATH (the release sse-proxy) is required".into());
    }
    if out.nginx.is_none() {
        out.nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
    }
    if out.presets.is_empty() {
        out.presets = PRESETS
            .iter()
            .map(|p| p.name.to_string())
            .chain(["resume".to_string()])
            .collect();
    }
    Ok(out)
}

async fn run_main(args: &[String]) -> Result<(), String> {
    let args = parse_run_args(args)?;
    let nofile = open_files_limit();
    let dir = std::env::temp_dir().join(format!("sse-proxy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (mut upstream, upstream_addr) = start_upstream()?;
    let ticks = clock_ticks();
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    println!(
        "machine: {cpu} cores, {model}; load average {}; open files limit {nofile}; nginx: {}; proxy: {}",
        load_average(),
        args.nginx
            .as_ref()
            .map_or("not found (skipped)".into(), |p| p.display().to_string()),
        args.proxy.display()
    );
    let mut summary = String::new();
    let mut result = Ok(());
    for name in &args.presets {
        if name == "resume" {
            match resume_cost(&args.proxy, &dir, upstream_addr).await {
                Ok(line) => {
                    summary.push_str(&line);
                    summary.push('\n');
                }
                Err(e) => result = Err(e),
            }
            continue;
        }
        let Some(preset) = PRESETS.iter().find(|p| p.name == name) else {
            continue;
        };
        // Each answer holds a client socket in this process and the upstream process, and two
        // sockets in the server under test (client and upstream side).
        let needed = 2 * preset.concurrency as u64 + 200;
        if nofile < needed {
            result = Err(format!(
                "preset {} needs an open files limit of at least {needed} (have {nofile}): run `ulimit -n {needed}` \
                 (or more, up to `ulimit -Hn`) first",
                preset.name
            ));
            break;
        }
        match run_preset(&args, preset, &dir, upstream_addr, ticks, nofile).await {
            Ok(rows) => summary.push_str(&summarise(preset, &rows)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    println!("\n{summary}");
    let _ = upstream.kill();
    let _ = upstream.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_preset(
    args: &RunArgs,
    preset: &Preset,
    dir: &Path,
    upstream: SocketAddr,
    ticks: f64,
    nofile: u64,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for target in ["direct", "nginx", "baseline", "sse-proxy"] {
        let server = match target {
            "direct" => Server {
                addr: upstream,
                child: None,
                nginx: false,
            },
            "nginx" => match &args.nginx {
                Some(bin) => start_nginx(bin, dir, upstream, nofile)?,
                None => continue,
            },
            "baseline" => match &args.baseline {
                Some(bin) => start_proxy(bin, dir, upstream)?,
                None => continue,
            },
            _ => start_proxy(&args.proxy, dir, upstream)?,
        };
        // Let the server settle (nginx's worker, the proxy's runtime) before the first reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let pids = server.pids();
        let cpu0: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        let perf = match (&args.perf, target, preset.name) {
            (Some(out), "sse-proxy", _) => Command::new("perf")
                .args(["record", "-g", "-q", "-o"])
                .arg(format!("{}.{}", out.display(), preset.name))
                .arg("-p")
                .arg(pids[0].to_string())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| eprintln!("perf not started: {e}"))
                .ok(),
            _ => None,
        };
        eprintln!("{}: {target} ...", preset.name);
        let started = Instant::now();
        let load = run_load(server.addr, preset).await;
        let elapsed = started.elapsed();
        if let Some(mut p) = perf {
            let _ = Command::new("kill").arg("-INT").arg(p.id().to_string()).status();
            let _ = p.wait();
        }
        let cpu1: u64 = pids.iter().map(|&p| cpu_ticks(p)).sum();
        let hwm: u64 = pids.iter().map(|&p| status_kib(p, "VmHWM:")).sum();
        server.stop();
        let tokens = (load.ok + load.failed) as u64 * preset.tokens as u64;
        eprintln!(
            "{}: {target}: {} ok, {} failed in {:.1} s, load average {}{}",
            preset.name,
            load.ok,
            load.failed,
            elapsed.as_secs_f64(),
            load_average(),
            load.first_failure
                .as_ref()
                .map_or(String::new(), |f| format!(" (first failure: {f})"))
        );
        let measured = !pids.is_empty();
        rows.push(Row {
            target,
            tokens,
            cpu_us_per_token: measured.then(|| (cpu1 - cpu0) as f64 / ticks * 1e6 / tokens.max(1) as f64),
            hwm_mib: measured.then(|| hwm as f64 / 1024.0),
            load,
        });
    }
    Ok(rows)
}

/// The preset's table, and the sse-proxy / nginx ratios.
fn summarise(preset: &Preset, rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## {} ({}: {} answers × {} tokens; load average at the end {})\n\
         | target | answers ok / failed | CPU per upstream token | peak RSS | TTFT p50 | TTFT p99 | events per token | bytes per token |\n\
         |---|---|---|---|---|---|---|---|",
        preset.label,
        preset.name,
        preset.concurrency * preset.rounds,
        preset.tokens,
        load_average()
    );
    let mut stats = Vec::new();
    for r in rows {
        let mut t = r.load.ttft_ms.clone();
        let (p50, p99) = (percentile(&mut t, 0.5), percentile(&mut t, 0.99));
        let per_token = r.tokens.max(1) as f64;
        let _ = writeln!(
            s,
            "| {} | {} / {} | {} | {} | {:.2} ms | {:.2} ms | {:.3} | {:.1} |",
            r.target,
            r.load.ok,
            r.load.failed,
            r.cpu_us_per_token.map_or("–".into(), |c| format!("{c:.1} µs")),
            r.hwm_mib.map_or("–".into(), |m| format!("{m:.1} MiB")),
            p50,
            p99,
            r.load.events as f64 / per_token,
            r.load.bytes as f64 / per_token,
        );
        stats.push((r.target, r.cpu_us_per_token, r.hwm_mib, p50, p99));
    }
    let find = |name: &str| stats.iter().find(|x| x.0 == name);
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    };
    if let (Some(p), Some(n)) = (find("sse-proxy"), find("nginx")) {
        let _ = writeln!(
            s,
            "sse-proxy / nginx: CPU per token {}, peak RSS {}, TTFT p50 {}, TTFT p99 {}",
            ratio(p.1, n.1),
            ratio(p.2, n.2),
            ratio(Some(p.3), Some(n.3)),
            ratio(Some(p.4), Some(n.4)),
        );
    }
    if let (Some(p), Some(b)) = (find("sse-proxy"), find("baseline")) {
        let _ = writeln!(
            s,
            "sse-proxy / baseline: CPU per token {}, peak RSS {}",
            ratio(p.1, b.1),
            ratio(p.2, b.2),
        );
    }
    if let (Some(p), Some(d)) = (find("sse-proxy"), find("direct")) {
        let _ = writeln!(s, "TTFT added by sse-proxy over direct: p50 {:.2} ms", p.3 - d.3);
    }
    s.push('\n');
    s
}

/// Replays a log of `RESUME_EVENTS` events to resuming clients: time to the first byte and to the
/// whole log (each resume on a fresh connection, from `Last-Event-ID: <stream>:0`).
async fn resume_cost(bin: &Path, dir: &Path, upstream: SocketAddr) -> Result<String, String> {
    let server = start_proxy(bin, dir, upstream)?;
    let path = format!("/api/question/stream?model=llama3&kind=step&tokens={RESUME_EVENTS}&rate=0");
    let mut sender = connect(server.addr).await?;
    let first = ask(&mut sender, &path, None, Instant::now()).await;
    let (Some(id), None, true) = (first.stream_id.clone(), &first.error, first.done) else {
        server.stop();
        return Err(format!("resume: the first answer failed: {:?}", first.error));
    };
    let expected = answer_text(RESUME_EVENTS);
    let (mut first_byte, mut whole, mut failed) = (Vec::new(), Vec::new(), 0);
    let mut events = 0;
    for _ in 0..RESUME_ROUNDS {
        let t0 = Instant::now();
        let mut a = match connect(server.addr).await {
            Ok(mut s) => ask(&mut s, &path, Some(&format!("{id}:0")), t0).await,
            Err(e) => Answer {
                error: Some(e),
                ..Answer::default()
            },
        };
        if a.error.is_none() && (a.text != expected || !a.done) {
            a.error = Some("replay differs from the answer".into());
        }
        match (&a.error, a.first_byte) {
            (None, Some(fb)) => {
                first_byte.push(fb.as_secs_f64() * 1e3);
                whole.push(a.total.as_secs_f64() * 1e3);
                events = a.events;
            }
            _ => failed += 1,
        }
    }
    server.stop();
    Ok(format!(
        "## Resume: replaying a {events}-event log ({RESUME_EVENTS} step events, {} bytes) to a resuming client, \
         {} resumes ({failed} failed), each on a fresh connection\n\
         time to first byte p50 {:.3} ms, p99 {:.3} ms; to the whole log p50 {:.3} ms, p99 {:.3} ms\n",
        first.bytes,
        RESUME_ROUNDS,
        percentile(&mut first_byte, 0.5),
        percentile(&mut first_byte, 0.99),
        percentile(&mut whole, 0.5),
        percentile(&mut whole, 0.99),
    ))
}
