//! Many concurrent streams whose clients keep cutting their connections and resuming: the clients,
//! the upstream they ask, and the check that every client got exactly its upstream's text.

use super::{answer, get, seen_uris, stream_id_of, text_of, Ev, Events, MockUpstream, Reply};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Seeds every script and every client's cuts.
pub const SEED: u64 = 0x5EED_CAFE_F00D_0001;

/// Stream `n`'s tokens (distinct per stream) and the gap between them, derived from `n` only.
pub fn script(n: usize) -> (Vec<String>, Duration) {
    let mut rng = StdRng::seed_from_u64(SEED ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let count = rng.gen_range(100..=200);
    let tokens = (0..count)
        .map(|i| format!("s{n}.t{i}:{:x} ", rng.gen_range(0..4096)))
        .collect();
    (tokens, Duration::from_millis(rng.gen_range(2..=5)))
}

/// An upstream that answers `/s/<n>` with stream `n`'s script.
pub async fn upstream() -> MockUpstream {
    MockUpstream::start(|parts, _| {
        let n: usize = parts
            .uri
            .path()
            .trim_start_matches("/s/")
            .parse()
            .unwrap_or(usize::MAX);
        let (tokens, gap) = script(n);
        Reply::sse(answer(&tokens, gap))
    })
    .await
}

/// What one client saw.
struct Outcome {
    text: String,
    cuts: usize,
    retries: usize,
}

/// What a client accepts from the proxy besides its own cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    /// Nothing: every response is 200 and every body runs until the client cuts it or `done`.
    Strict,
    /// What the browser client also rides out on a shared store under load: a `503` with
    /// `Retry-After` (the store is slow to answer), and a body that ends early without an event
    /// (the store failed a read): the client resumes from its last event, as a browser does.
    StoreRetries,
}

/// Most proxy-initiated retries one client accepts before the run counts as broken.
const MAX_RETRIES: usize = 50;

async fn client(addr: SocketAddr, n: usize, tolerance: Tolerance) -> Outcome {
    let mut rng = StdRng::seed_from_u64(SEED.wrapping_add(n as u64 * 7919));
    let planned = rng.gen_range(1..=5);
    let url = format!("http://{addr}/s/{n}");
    let mut sid: Option<String> = None;
    let mut last_seq = 0u64;
    let mut events: Vec<Ev> = Vec::new();
    let mut cuts = 0;
    let mut retries = 0;
    loop {
        let resp = match &sid {
            None => get(&url, &[]).await,
            Some(s) => get(&url, &[("last-event-id", &format!("{s}:{last_seq}"))]).await,
        };
        if resp.status() == 503 && tolerance == Tolerance::StoreRetries && retries < MAX_RETRIES {
            assert!(
                resp.headers().contains_key("retry-after"),
                "stream {n}: 503 without Retry-After"
            );
            retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if resp.status() != 200 {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            panic!(
                "stream {n}: reconnect {cuts} after seq {last_seq}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        let got = stream_id_of(&resp);
        assert_eq!(
            sid.get_or_insert_with(|| got.clone()),
            &got,
            "stream {n}: same stream after resume"
        );
        let mut evs = Events::new(resp);
        // The first cut comes early so that every client cuts at least once.
        let cut_after = (cuts < planned).then(|| rng.gen_range(0..=if cuts == 0 { 2 } else { 8 }));
        let mut read = 0;
        let mut finished = false;
        while cut_after.is_none_or(|k| read < k) {
            let Some(e) = evs.next().await else { break };
            let seq = e.seq();
            assert!(
                seq > last_seq,
                "stream {n}: seq {seq} after {last_seq} (duplicate or reordered)"
            );
            assert_eq!(seq, last_seq + 1, "stream {n}: gap before seq {seq}");
            last_seq = seq;
            read += 1;
            assert_ne!(e.event, "error", "stream {n}: {}", e.data);
            let end = e.event == "done";
            events.push(e);
            if end {
                finished = true;
                break;
            }
        }
        if finished {
            break;
        }
        if cut_after.is_none_or(|k| read < k) {
            // The proxy ended the body before the client cut it or saw `done`.
            assert!(
                tolerance == Tolerance::StoreRetries && retries < MAX_RETRIES,
                "stream {n}: the body ended without done"
            );
            retries += 1;
            continue;
        }
        drop(evs);
        cuts += 1;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=20))).await;
    }
    Outcome {
        text: text_of(&events),
        cuts,
        retries,
    }
}

/// Runs `streams` clients against the proxy (or balancer) at `addr`, in front of `up` (from
/// [`upstream`]), and checks that every one got exactly its text with one upstream request per
/// stream. Prints and returns the number of cuts.
pub async fn run(addr: SocketAddr, up: &MockUpstream, streams: usize, tolerance: Tolerance) -> usize {
    let t0 = std::time::Instant::now();
    let clients: Vec<_> = (0..streams)
        .map(|n| tokio::spawn(client(addr, n, tolerance)))
        .collect();
    let mut total_cuts = 0;
    let mut total_retries = 0;
    let mut min_cuts = usize::MAX;
    let mut differences = 0;
    for (n, c) in clients.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .unwrap_or_else(|_| panic!("stream {n} did not finish"))
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let (tokens, _) = script(n);
        if out.text != tokens.concat() {
            differences += 1;
            eprintln!("stream {n}: the client's text differs from its upstream's");
        }
        total_cuts += out.cuts;
        total_retries += out.retries;
        min_cuts = min_cuts.min(out.cuts);
    }
    let elapsed = t0.elapsed();
    assert_eq!(differences, 0, "content differences");
    assert_eq!(up.requests(), streams, "one upstream request per stream");
    let mut per_path: HashMap<String, usize> = HashMap::new();
    for uri in seen_uris(&up.seen) {
        *per_path.entry(uri).or_default() += 1;
    }
    assert_eq!(per_path.len(), streams);
    assert!(per_path.values().all(|&c| c == 1), "a stream was requested twice");
    assert!(min_cuts >= 1, "every client cut at least once");
    assert_eq!(up.closed_early(), 0, "no upstream was cut short");
    println!(
        "chaos: {streams} streams, {total_cuts} cuts, {total_retries} retries the proxy asked for, {:.2} s (seed {SEED:#x})",
        elapsed.as_secs_f64()
    );
    total_cuts
}
