//! The memory store against the Redis store, measured in one run with the shipped proxy.toml
//! (default batching, progress on): the proxy's CPU per upstream token, the time to the first event
//! of a resume (on another replica with Redis; on the same replica with memory, which cannot cross),
//! and the Redis memory one answer takes once it has finished.
//!
//! Each proxy is the release binary in its own process, so its CPU (utime + stime from
//! `/proc/<pid>/stat`) is its own; this process hosts the upstream and the clients. Redis is a real
//! `redis-server` on a free loopback port (`tests/common/redis_server.rs`).
//!
//! Run: `cargo bench --bench store` (prints a table; no assertions). `BENCH_STORE_STREAMS`
//! (default 50) concurrent answers of `BENCH_STORE_TOKENS` (default 1000) tokens at
//! `BENCH_STORE_TPS` (default 50) tokens/s each for the CPU and memory figures;
//! `BENCH_STORE_RESUMES` (default 40) resumes, each after 30 events, from 10 events back (as a
//! client that lost what was in flight), so the first event comes from the store.

#[path = "../tests/common/mod.rs"]
mod common;

use common::redis_server::RedisServer;
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 on Linux).
const USER_HZ: f64 = 100.0;
const KEY_PREFIX: &str = "sse-proxy-bench";
const ROUTE: &str = "/api/question/stream?model=llama3";
/// Events read before the connection is cut, and how far back the resume starts.
const CUT_AFTER: usize = 30;
const BACK: usize = 10;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Word-sized tokens as an LLM streams them.
fn tokens(n: usize) -> Vec<String> {
    let pool = [
        " The",
        " proxy",
        " keeps",
        " every",
        " answer",
        " in",
        " Redis",
        ",",
        " so",
        " a",
        " reconnect",
        " resumes",
        " on",
        " any",
        " replica",
        ".",
        " It",
        " works",
        " across",
        " deploys",
        " and",
        " restarts",
        "\n",
    ];
    (0..n).map(|i| pool[i % pool.len()].to_owned()).collect()
}

/// The shipped proxy.toml on free ports in front of `upstream`, on the Redis at `redis` if given.
fn config_text(upstream: SocketAddr, redis: Option<&str>) -> String {
    let mut cfg: toml::Table = toml::from_str(include_str!("../proxy.toml")).expect("proxy.toml");
    let mut set = |section: &str, key: &str, value: &str| {
        cfg.entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table")
            .insert(key.to_owned(), toml::Value::String(value.to_owned()));
    };
    set("server", "listen", "127.0.0.1:0");
    set("server", "admin_listen", "127.0.0.1:0");
    set("upstream", "url", &format!("http://{upstream}"));
    if let Some(url) = redis {
        set("store", "kind", "redis");
        set("store", "url", url);
        set("store", "key_prefix", KEY_PREFIX);
    }
    toml::to_string(&cfg).expect("toml")
}

/// A proxy process; killed on drop.
struct Replica {
    child: Child,
    addr: SocketAddr,
    _stdout: BufReader<ChildStdout>,
    _config: process::TempFile,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(upstream: SocketAddr, redis: Option<&str>) -> Replica {
        let config = process::TempFile::new("bench-store.toml", &config_text(upstream, redis));
        let mut child = Command::new(process::BIN)
            .args(["--config", config.path()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sse-proxy");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON listening line");
        let addr = v["listening"].as_str().expect("listening").parse().expect("addr");
        Replica {
            child,
            addr,
            _stdout: stdout,
            _config: config,
        }
    }

    /// CPU seconds (user + system) the process has used.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("/proc stat");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat shape") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields[i - 3].parse::<u64>().expect("ticks");
        (ticks(14) + ticks(15)) as f64 / USER_HZ
    }
}

/// Redis's own CPU seconds (user + system), from `INFO cpu`.
async fn redis_cpu_seconds(conn: &mut redis::aio::MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(conn)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .map(|(_, v)| v.trim().parse::<f64>().expect("cpu seconds"))
        .sum()
}

/// Runs `streams` answers at once through `replica`, each read to its end and checked: the
/// proxy's CPU seconds per upstream token.
async fn cpu_per_token(replica: &Replica, streams: usize, answer_tokens: &[String]) -> f64 {
    let before = replica.cpu_seconds();
    let clients: Vec<_> = (0..streams)
        .map(|_| {
            let url = format!("http://{}{ROUTE}", replica.addr);
            tokio::spawn(async move { Events::new(get(&url, &[]).await).all().await })
        })
        .collect();
    for c in clients {
        let events = c.await.expect("client");
        assert_eq!(text_of(&events), answer_tokens.concat(), "every answer complete");
    }
    let used = replica.cpu_seconds() - before;
    used / (streams * answer_tokens.len()) as f64
}

/// Per answer: the Redis bytes its keys take (`MEMORY USAGE … SAMPLES 0`), split into the log and
/// the metadata, and the log's entries.
struct RedisFootprint {
    answers: usize,
    log_bytes: f64,
    meta_bytes: f64,
    entries: f64,
}

async fn footprint(conn: &mut redis::aio::MultiplexedConnection) -> RedisFootprint {
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{KEY_PREFIX}:{{*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter_async(conn)
            .await
            .expect("SCAN");
        let mut keys = Vec::new();
        while let Some(k) = futures_util::StreamExt::next(&mut iter).await {
            keys.push(k.expect("key"));
        }
        keys
    };
    let mut answers: HashMap<String, ()> = HashMap::new();
    let (mut log_bytes, mut meta_bytes, mut entries) = (0u64, 0u64, 0u64);
    for key in &keys {
        let tag = key.split(['{', '}']).nth(1).unwrap_or_default().to_owned();
        answers.insert(tag, ());
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await
            .expect("MEMORY USAGE");
        if key.ends_with(":log") {
            log_bytes += bytes;
            let n: u64 = redis::cmd("XLEN").arg(key).query_async(conn).await.expect("XLEN");
            entries += n;
        } else {
            meta_bytes += bytes;
        }
    }
    let n = answers.len().max(1) as f64;
    RedisFootprint {
        answers: answers.len(),
        log_bytes: log_bytes as f64 / n,
        meta_bytes: meta_bytes as f64 / n,
        entries: entries as f64 / n,
    }
}

/// Starts answers on `start`, cuts each after [`CUT_AFTER`] events and resumes it on `resume` from
/// [`BACK`] events earlier: the times from sending the resume to its first event, in ms, sorted.
async fn resume_ttfb(start: &Replica, resume: &Replica, trials: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(trials);
    for _ in 0..trials {
        let resp = get(&format!("http://{}{ROUTE}", start.addr), &[]).await;
        assert_eq!(resp.status(), 200);
        let mut events = Events::new(resp);
        let seen = events.take(CUT_AFTER).await;
        drop(events);
        assert_eq!(seen.len(), CUT_AFTER, "the answer is long enough to be cut");
        let from = &seen[CUT_AFTER - 1 - BACK];
        let id = from.id.clone().expect("event id");
        let t0 = Instant::now();
        let resp = get(
            &format!("http://{}{ROUTE}", resume.addr),
            &[("last-event-id", &id)],
        )
        .await;
        assert_eq!(resp.status(), 200, "resumed");
        let first = Events::new(resp).next().await.expect("a first event");
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            first.seq(),
            from.seq() + 1,
            "the resume starts right after its Last-Event-ID"
        );
    }
    times.sort_by(f64::total_cmp);
    times
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let streams = env_or("BENCH_STORE_STREAMS", 50);
    let answer_len = env_or("BENCH_STORE_TOKENS", 1000);
    let tps = env_or("BENCH_STORE_TPS", 50).max(1);
    let trials = env_or("BENCH_STORE_RESUMES", 40).max(1);
    let Some(redis_server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let answer_tokens = tokens(answer_len);
        let t = answer_tokens.clone();
        let gap = Duration::from_secs_f64(1.0 / tps as f64);
        let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t, gap))).await;
        let url = redis_server.url();
        let mut conn = redis::Client::open(url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");

        let memory = Replica::start(up.addr, None);
        let mem_cpu = cpu_per_token(&memory, streams, &answer_tokens).await;

        let a = Replica::start(up.addr, Some(&url));
        let b = Replica::start(up.addr, Some(&url));
        let redis_before = redis_cpu_seconds(&mut conn).await;
        let red_cpu = cpu_per_token(&a, streams, &answer_tokens).await;
        let redis_cpu = (redis_cpu_seconds(&mut conn).await - redis_before) / (streams * answer_len) as f64;
        let fp = footprint(&mut conn).await;

        // Resumes need answers still running after CUT_AFTER events.
        let mem_ttfb = resume_ttfb(&memory, &memory, trials).await;
        let red_ttfb = resume_ttfb(&a, &b, trials).await;

        println!(
            "{streams} concurrent answers x {answer_len} tokens at {tps} tokens/s, shipped proxy.toml; \
             {trials} resumes each after {CUT_AFTER} events from {BACK} events back"
        );
        println!("| | memory store | Redis store |");
        println!("|---|---|---|");
        println!(
            "| proxy CPU per upstream token (utime+stime) | {:.1} µs | {:.1} µs (+ Redis server {:.1} µs) |",
            mem_cpu * 1e6,
            red_cpu * 1e6,
            redis_cpu * 1e6,
        );
        println!(
            "| resume, time to first event, p50 / p90 / max | {:.2} / {:.2} / {:.2} ms (same replica) | {:.2} / {:.2} / {:.2} ms (other replica) |",
            pct(&mem_ttfb, 0.5),
            pct(&mem_ttfb, 0.9),
            pct(&mem_ttfb, 1.0),
            pct(&red_ttfb, 0.5),
            pct(&red_ttfb, 0.9),
            pct(&red_ttfb, 1.0),
        );
        println!(
            "| Redis memory per finished {answer_len}-token answer | – | {:.0} bytes (log {:.0} in {:.0} entries, meta {:.0}; {} answers) |",
            fp.log_bytes + fp.meta_bytes,
            fp.log_bytes,
            fp.entries,
            fp.meta_bytes,
            fp.answers,
        );
        drop((a, b, memory));
    });
}
