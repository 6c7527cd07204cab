//! A misbehaving upstream, injected at the byte level: every fault ends the stream with the right
//! coded `error` event (or a real completion), the right `outcome` label, and bounded memory.
//!
//! The cases, and what each must end with:
//!
//! | fault | end | outcome |
//! |---|---|---|
//! | close (FIN) in the middle of an event, no length, no chunks (also at seeded random offsets) | `upstream_reset`, recoverable | `error` |
//! | close between events without a terminal event | `done {"total_tokens":N}` | `completed` |
//! | chunked body closed without its last chunk | `upstream_reset`, recoverable | `error` |
//! | `Content-Length` body closed early | `upstream_reset`, recoverable | `error` |
//! | TCP reset at seeded random byte offsets (close-delimited and chunked) | `upstream_reset`, recoverable | `error` |
//! | stall (headers sent, then nothing) | `upstream_timeout`, recoverable | `error` |
//! | a 5xx error page written into a running `200` event stream, then close | `upstream_reset` (the event or the chunk framing is cut) | `error` |
//! | a `500` answer with an event-stream body | passed through as the backend's `500`; no stream starts | none |
//! | junk lines between events | ignored (not SSE fields); the answer completes exactly | `completed` |
//! | binary junk without a line end, over `max_event_bytes` | `upstream_malformed`, not recoverable | `error` |
//! | one data line over `max_event_bytes` | `upstream_malformed`, not recoverable | `error` |
//! | an endless comment line | costs no memory, the answer completes | `completed` |
//! | one byte at a time (close-delimited, one chunk per byte, gzip) | the answer completes byte-exact | `completed` |
//! | gzip / deflate / br although `identity` was asked | decoded; the answer completes byte-exact | `completed` |
//! | an unknown `Content-Encoding` | `upstream_malformed`, not recoverable | `error` |
//! | a corrupt compressed body | `upstream_malformed`, not recoverable | `error` |
//! | a compressed body cut short | `upstream_reset`, recoverable | `error` |

mod common;

use bytes::Bytes;
use common::raw::{chunk, head, last_chunk, sse_head, Framing, Raw, RawUpstream};
use common::*;
use sse_proxy::config::Config;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Small limits, so that every bound is reached by a small test.
const MAX_EVENT: usize = 4 * 1024;
const MAX_STREAM: usize = 16 * 1024;
const MAX_TOTAL: usize = 64 * 1024;

fn limits(c: &mut Config) {
    c.upstream.max_event_bytes.0 = MAX_EVENT as u64;
    c.resume.max_stream_bytes.0 = MAX_STREAM as u64;
    c.resume.max_total_bytes.0 = MAX_TOTAL as u64;
    c.upstream.idle_timeout.0 = Duration::from_secs(5);
}

/// The reference answer: `thinking`, `n` tokens `w0 w1 …`, `done` (CRLF line ends).
fn answer_bytes(n: usize) -> Vec<u8> {
    let tokens: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let mut out = Vec::new();
    for step in answer(&tokens, Duration::ZERO) {
        if let Step::Bytes(b) = step {
            out.extend_from_slice(&b);
        }
    }
    out
}

fn answer_text(n: usize) -> String {
    (0..n).map(|i| format!("w{i} ")).collect()
}

/// Token events only, no terminal event.
fn tokens_bytes(tokens: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tokens {
        if let Step::Bytes(b) = tok(t) {
            out.extend_from_slice(&b);
        }
    }
    out
}

fn bytes(b: &[u8]) -> Raw {
    Raw::Bytes(Bytes::copy_from_slice(b))
}

fn finished(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!("sse_proxy_streams_finished_total{{outcome=\"{outcome}\"}}"),
    )
}

/// How a case must end.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The upstream's own `done` (the reference answer's).
    Terminal,
    /// The proxy's `done {"total_tokens":N}`.
    Done,
    /// An `error` event with this code and `recoverable`.
    Error(&'static str, bool),
}

impl End {
    fn outcome(self) -> &'static str {
        match self {
            End::Terminal | End::Done => "completed",
            End::Error(..) => "error",
        }
    }
}

/// Runs one stream through the proxy and checks how it ended, the outcome metric, and that the
/// logs stayed within their limits. Returns the events.
async fn check(p: &TestProxy, end: End) -> Vec<Ev> {
    let before = metrics_text(p.admin).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    let events = Events::new(resp).all().await;
    assert_gapless(&events, 1);
    let last = events.last().expect("events");
    match end {
        End::Terminal => {
            assert_upstream_done(&events);
        }
        End::Done => {
            assert_eq!(last.event, "done", "{events:?}");
            let tokens = text_of(&events).split_inclusive(' ').count();
            assert_eq!(last.json()["total_tokens"], tokens as u64, "{events:?}");
        }
        End::Error(code, recoverable) => {
            assert_eq!(last.event, "error", "{events:?}");
            assert_eq!(last.json()["code"], code, "{events:?}");
            assert_eq!(last.json()["recoverable"], recoverable, "{events:?}");
            assert!(!events.iter().any(|e| e.event == "done"), "{events:?}");
        }
    }
    let outcome = end.outcome();
    let counted = wait_async(|| async {
        let after = metrics_text(p.admin).await;
        finished(&after, outcome) == finished(&before, outcome) + 1.0
    })
    .await;
    assert!(counted, "outcome {outcome} counted once");
    let after = metrics_text(p.admin).await;
    for other in ["completed", "cancelled", "abandoned", "error", "shutdown"] {
        if other != outcome {
            assert_eq!(
                finished(&after, other),
                finished(&before, other),
                "outcome {other}"
            );
        }
    }
    assert_memory_bounded(p).await;
    events
}

/// Polls an async condition until it holds or `WAIT` passes.
async fn wait_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(ms(10)).await;
    }
}

/// Every log within `max_stream_bytes`, all of them within `max_total_bytes` (as `/streams` and
/// `sse_proxy_log_bytes` report them).
async fn assert_memory_bounded(p: &TestProxy) {
    let list = json_of(&body_bytes(get(&format!("http://{}/streams", p.admin), &[]).await).await);
    let mut total = 0;
    for s in list["streams"].as_array().expect("stream list") {
        let b = s["bytes"].as_u64().expect("bytes") as usize;
        assert!(b <= MAX_STREAM, "one log holds {b} bytes: {s}");
        total += b;
    }
    assert!(total <= MAX_TOTAL, "logs hold {total} bytes");
    let held = list["log_bytes"].as_u64().expect("log_bytes") as usize;
    assert!(held <= MAX_TOTAL, "log_bytes {held}");
    let gauge = metric(&metrics_text(p.admin).await, "sse_proxy_log_bytes");
    assert!(gauge <= MAX_TOTAL as f64, "sse_proxy_log_bytes {gauge}");
}

async fn raw_proxy<F>(script: F) -> (RawUpstream, TestProxy)
where
    F: Fn(usize) -> Vec<Raw> + Send + Sync + 'static,
{
    let up = RawUpstream::start(script).await;
    let p = proxy(up.addr, limits).await;
    (up, p)
}

/// Learned answers for the test route.
fn learned(p: &TestProxy) -> usize {
    p.app
        .learner()
        .expect("progress on")
        .samples("/stream", "default")
}

// ------------------------------------------------------------------------------------------
// Truncation: an answer cut short never looks complete.

#[tokio::test]
async fn close_in_the_middle_of_an_event_is_a_reset_and_is_not_learned() {
    let mut body = tokens_bytes(&["a ", "b ", "c ", "d ", "e "]);
    body.extend_from_slice(b"data: {\"content\": \"tru");
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&body), Raw::Close]).await;
    let events = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&events), "a b c d e ");
    assert_eq!(learned(&p), 0, "a truncated answer was learned");
}

#[tokio::test]
async fn close_at_an_event_boundary_is_a_complete_answer() {
    let body = tokens_bytes(&["a ", "b ", "c "]);
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&body), Raw::Close]).await;
    let events = check(&p, End::Done).await;
    assert_eq!(text_of(&events), "a b c ");
    assert_eq!(learned(&p), 1);
}

#[tokio::test]
async fn a_field_line_without_its_blank_line_is_a_reset() {
    let mut body = tokens_bytes(&["a "]);
    body.extend_from_slice(b"event: thinking\r\ndata: {}\r\n");
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&body), Raw::Close]).await;
    let events = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&events), "a ");
}

#[tokio::test]
async fn chunked_body_without_its_last_chunk_is_a_reset() {
    let body = tokens_bytes(&["a ", "b "]);
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Chunked, &[]), chunk(&body), Raw::Close]).await;
    let events = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&events), "a b ");
    assert_eq!(learned(&p), 0);
}

#[tokio::test]
async fn chunked_body_with_its_last_chunk_completes() {
    let body = tokens_bytes(&["a ", "b "]);
    let (_up, p) = raw_proxy(move |_| {
        vec![
            sse_head(Framing::Chunked, &[]),
            chunk(&body),
            last_chunk(),
            Raw::Hang,
        ]
    })
    .await;
    let events = check(&p, End::Done).await;
    assert_eq!(text_of(&events), "a b ");
}

#[tokio::test]
async fn content_length_body_closed_early_is_a_reset() {
    let body = tokens_bytes(&["a ", "b "]);
    let n = body.len() + 100;
    let (_up, p) =
        raw_proxy(move |_| vec![sse_head(Framing::Length(n), &[]), bytes(&body), Raw::Close]).await;
    let events = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&events), "a b ");
}

// ------------------------------------------------------------------------------------------
// Compression the proxy did not ask for.

/// The reference answer's events, each compressed and flushed on its own (as a streaming server
/// compresses), so the pieces can be sent one at a time; the last piece ends the compressed stream.
async fn compressed_pieces(encoding: &str, n: usize) -> Vec<Bytes> {
    use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZlibEncoder};
    let tokens: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let events: Vec<Bytes> = answer(&tokens, Duration::ZERO)
        .into_iter()
        .filter_map(|s| match s {
            Step::Bytes(b) => Some(b),
            _ => None,
        })
        .collect();
    match encoding {
        "gzip" => pieces(GzipEncoder::new(Vec::new()), |e| e.get_mut(), &events).await,
        "deflate" => pieces(ZlibEncoder::new(Vec::new()), |e| e.get_mut(), &events).await,
        "br" => pieces(BrotliEncoder::new(Vec::new()), |e| e.get_mut(), &events).await,
        other => panic!("no encoder for {other}"),
    }
}

async fn pieces<E>(mut enc: E, out: impl Fn(&mut E) -> &mut Vec<u8>, events: &[Bytes]) -> Vec<Bytes>
where
    E: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut pieces = Vec::new();
    for e in events {
        enc.write_all(e).await.expect("compress");
        enc.flush().await.expect("flush");
        pieces.push(Bytes::from(std::mem::take(out(&mut enc))));
    }
    enc.shutdown().await.expect("finish");
    if let Some(last) = pieces.last_mut() {
        let mut l = last.to_vec();
        l.extend_from_slice(out(&mut enc));
        *last = Bytes::from(l);
    }
    pieces
}

fn encoded(encoding: &str, pieces: Vec<Bytes>) -> Reply {
    let mut r = Reply::sse(pieces.into_iter().map(Step::Bytes).collect());
    r.headers.push(("content-encoding".into(), encoding.into()));
    r
}

async fn mock_proxy(reply: Reply, edit: impl FnOnce(&mut Config)) -> (MockUpstream, TestProxy) {
    let up = MockUpstream::start(move |_, _| reply.clone()).await;
    let p = proxy(up.addr, |c| {
        limits(c);
        edit(c);
    })
    .await;
    (up, p)
}

#[tokio::test]
async fn gzip_deflate_and_br_answers_are_decoded_byte_exact() {
    for encoding in ["gzip", "deflate", "br"] {
        let (up, p) = mock_proxy(encoded(encoding, compressed_pieces(encoding, 40).await), |_| {}).await;
        let events = check(&p, End::Terminal).await;
        assert_eq!(text_of(&events), answer_text(40), "{encoding}");
        assert_eq!(events[0].event, "thinking", "{encoding}");
        assert_eq!(up.last_request().headers["accept-encoding"], "identity");
    }
}

#[tokio::test]
async fn a_compressed_answer_is_decoded_as_it_arrives() {
    let mut pieces = compressed_pieces("gzip", 3).await;
    pieces.truncate(2); // thinking and the first token; the rest never comes
    let mut reply = encoded("gzip", pieces);
    reply.steps.push(Step::Hang);
    let (_up, p) = mock_proxy(reply, |c| c.upstream.idle_timeout.0 = ms(500)).await;
    let events = check(&p, End::Error("upstream_timeout", true)).await;
    assert_eq!(events[0].event, "thinking");
    assert_eq!(text_of(&events), "w0 ");
}

#[tokio::test]
async fn an_unknown_content_encoding_is_malformed_not_parsed() {
    let mut reply = Reply::sse(answer(&["a".into(), "b".into()], Duration::ZERO));
    reply.headers.push(("content-encoding".into(), "zstd".into()));
    let (_up, p) = mock_proxy(reply, |_| {}).await;
    let events = check(&p, End::Error("upstream_malformed", false)).await;
    assert_eq!(text_of(&events), "");
}

#[tokio::test]
async fn a_corrupt_compressed_answer_is_malformed() {
    let mut pieces = compressed_pieces("gzip", 5).await;
    let mut last = pieces.pop().expect("pieces").to_vec();
    for b in last.iter_mut() {
        *b ^= 0x5a;
    }
    pieces.push(Bytes::from(last));
    let (_up, p) = mock_proxy(encoded("gzip", pieces), |_| {}).await;
    check(&p, End::Error("upstream_malformed", false)).await;
}

#[tokio::test]
async fn a_compressed_answer_cut_short_is_a_reset() {
    let pieces = compressed_pieces("br", 5).await;
    let (_up, p) = raw_proxy(move |_| {
        let mut steps = vec![sse_head(Framing::Close, &[("Content-Encoding", "br")])];
        steps.extend(pieces[..3].iter().cloned().map(Raw::Bytes));
        steps.push(Raw::Close);
        steps
    })
    .await;
    let events = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&events), "w0 w1 ");
}

// ------------------------------------------------------------------------------------------
// Resets and closes at seeded random byte offsets.

const SEED: u64 = 0xFA17_5EED_0000_0009;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    fn below(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

const N: usize = 12;

/// Where the reference answer's `done` event starts.
fn done_start(body: &[u8]) -> usize {
    let needle = b"event: done";
    body.windows(needle.len())
        .position(|w| w == needle)
        .expect("a done event")
}

/// How much of `prefix` of the reference answer is complete events: an event is dispatched by
/// the CR of its blank line already.
fn complete_len(prefix: &[u8]) -> usize {
    if prefix.ends_with(b"\r\n\r") {
        return prefix.len();
    }
    prefix
        .windows(4)
        .rposition(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4)
}

/// The token text of the events completed within `prefix` of the reference answer.
fn complete_text(prefix: &[u8]) -> String {
    let n = prefix[..complete_len(prefix)]
        .windows(6)
        .filter(|w| w == b"data: ")
        .count()
        .saturating_sub(1); // the thinking event
    answer_text(N).split_inclusive(' ').take(n).collect()
}

/// The body chunked, three lines per chunk (so chunk boundaries fall inside events too).
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for lines in body
        .split_inclusive(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(3)
    {
        let piece: Vec<u8> = lines.concat();
        if let Raw::Bytes(b) = chunk(&piece) {
            out.extend_from_slice(&b);
        }
    }
    out
}

#[tokio::test]
async fn resets_at_random_offsets_are_resets() {
    let body = answer_bytes(N);
    let mut rng = Rng(SEED);
    for framing in [Framing::Close, Framing::Chunked] {
        let wire = match framing {
            Framing::Chunked => chunked(&body),
            _ => body.clone(),
        };
        // Cuts before the terminal event: a reset is all the proxy can report.
        let end = done_start(&wire);
        for _ in 0..6 {
            let cut = rng.below(1, end);
            let sent = wire[..cut].to_vec();
            let (_up, p) = raw_proxy(move |_| vec![sse_head(framing, &[]), bytes(&sent), Raw::Reset]).await;
            let events = check(&p, End::Error("upstream_reset", true)).await;
            let text = text_of(&events);
            assert!(
                answer_text(N).starts_with(&text),
                "{framing:?} cut at {cut}: {text:?}"
            );
            if let Framing::Close = framing {
                assert_eq!(text, complete_text(&body[..cut]), "cut at {cut}");
            }
        }
    }
    // A reset after the terminal event: the answer was complete.
    let sent = body.clone();
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&sent), Raw::Reset]).await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
}

#[tokio::test]
async fn closes_at_random_offsets_are_resets_unless_between_events() {
    let body = answer_bytes(N);
    let mut rng = Rng(SEED ^ 0xC105E);
    let mut cuts: Vec<usize> = (0..6).map(|_| rng.below(1, done_start(&body))).collect();
    // Two cuts exactly between events.
    let boundaries: Vec<usize> = body
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"\r\n\r\n")
        .map(|(i, _)| i + 4)
        .collect();
    cuts.push(boundaries[1]);
    cuts.push(boundaries[boundaries.len() - 2]);
    for cut in cuts {
        let sent = body[..cut].to_vec();
        let between = complete_len(&body[..cut]) == cut;
        let (_up, p) =
            raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&sent), Raw::Close]).await;
        let end = if between {
            End::Done
        } else {
            End::Error("upstream_reset", true)
        };
        let events = check(&p, end).await;
        assert_eq!(text_of(&events), complete_text(&body[..cut]), "cut at {cut}");
    }
}

// ------------------------------------------------------------------------------------------
// Stalls.

#[tokio::test]
async fn stalls_end_with_upstream_timeout() {
    let body = answer_bytes(N);
    let mid_event = body.len() / 2;
    let scripts: Vec<Vec<u8>> = vec![
        Vec::new(),
        body[..done_start(&body)].to_vec(),
        body[..mid_event].to_vec(),
    ];
    for sent in scripts {
        let expect = complete_text(&sent);
        let up =
            RawUpstream::start(move |_| vec![sse_head(Framing::Close, &[]), bytes(&sent), Raw::Hang]).await;
        let p = proxy(up.addr, |c| {
            limits(c);
            c.upstream.idle_timeout.0 = ms(300);
        })
        .await;
        let events = check(&p, End::Error("upstream_timeout", true)).await;
        assert_eq!(text_of(&events), expect);
    }
}

// ------------------------------------------------------------------------------------------
// A 5xx after the headers.

const ERROR_PAGE: &[u8] =
    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error";

#[tokio::test]
async fn an_error_page_inside_a_running_stream_is_a_reset() {
    let events = tokens_bytes(&["a ", "b "]);
    // Close-delimited: the page is read as body bytes and leaves the last line unfinished.
    let ev = events.clone();
    let (_up, p) = raw_proxy(move |_| {
        vec![
            sse_head(Framing::Close, &[]),
            bytes(&ev),
            bytes(ERROR_PAGE),
            Raw::Close,
        ]
    })
    .await;
    let got = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&got), "a b ");
    // Chunked: the page breaks the chunk framing.
    let (_up, p) = raw_proxy(move |_| {
        vec![
            sse_head(Framing::Chunked, &[]),
            chunk(&events),
            bytes(ERROR_PAGE),
            Raw::Close,
        ]
    })
    .await;
    let got = check(&p, End::Error("upstream_reset", true)).await;
    assert_eq!(text_of(&got), "a b ");
}

#[tokio::test]
async fn a_500_with_an_event_stream_body_is_passed_through_and_starts_no_stream() {
    let body = tokens_bytes(&["a "]);
    let n = body.len();
    let (_up, p) = raw_proxy(move |_| {
        vec![
            head(500, "text/event-stream", Framing::Length(n), &[]),
            bytes(&body),
            Raw::Close,
        ]
    })
    .await;
    let before = metrics_text(p.admin).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(body_bytes(resp).await, tokens_bytes(&["a "]));
    let after = metrics_text(p.admin).await;
    for m in [
        "sse_proxy_streams_started_total",
        "sse_proxy_streams_finished_total{outcome=\"error\"}",
        "sse_proxy_streams_finished_total{outcome=\"completed\"}",
    ] {
        assert_eq!(metric(&after, m), metric(&before, m), "{m}");
    }
    assert_eq!(p.app.registry.len(), 0);
}

// ------------------------------------------------------------------------------------------
// Garbage and huge lines.

/// `n` seeded random bytes with no line end.
fn junk(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| match (rng.next() % 256) as u8 {
            b'\r' | b'\n' => b'~',
            b => b,
        })
        .collect()
}

#[tokio::test]
async fn junk_lines_between_events_are_ignored() {
    let mut rng = Rng(SEED ^ 0x9A4B);
    let mut body = Vec::new();
    for (i, event) in answer_bytes(N).split_inclusive(|b| *b == b'\n').enumerate() {
        if event == b"\r\n" {
            // Junk lines that are no field (`~` starts no field name) right before a dispatch.
            for _ in 0..(i % 3) {
                body.push(b'~');
                let len = rng.below(1, 200);
                body.extend(junk(&mut rng, len));
                body.extend_from_slice(b"\r\n");
            }
        }
        body.extend_from_slice(event);
    }
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&body), Raw::Close]).await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
}

#[tokio::test]
async fn binary_junk_without_line_ends_is_malformed() {
    let mut rng = Rng(SEED ^ 0xB1);
    let mut body = tokens_bytes(&["a "]);
    body.extend(junk(&mut rng, 4 * MAX_EVENT));
    let (_up, p) = raw_proxy(move |_| vec![sse_head(Framing::Close, &[]), bytes(&body), Raw::Hang]).await;
    let events = check(&p, End::Error("upstream_malformed", false)).await;
    assert_eq!(text_of(&events), "a ");
}

#[tokio::test]
async fn a_huge_data_line_is_malformed() {
    let mut huge = b"data: ".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 3 * MAX_EVENT));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut steps = vec![sse_head(Framing::Close, &[]), bytes(&tokens_bytes(&["a "]))];
    // In small writes, so the proxy sees the line grow rather than arrive whole.
    steps.extend(huge.chunks(1000).map(bytes));
    steps.push(bytes(&tokens_bytes(&["never "])));
    steps.push(Raw::Close);
    let (_up, p) = raw_proxy(move |_| steps.clone()).await;
    let events = check(&p, End::Error("upstream_malformed", false)).await;
    assert_eq!(text_of(&events), "a ");
}

#[tokio::test]
async fn an_endless_comment_costs_nothing_and_the_answer_completes() {
    let body = answer_bytes(N);
    let split = body.len() / 3;
    let split = split
        + body[split..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("line end")
        + 2;
    let mut steps = vec![sse_head(Framing::Close, &[]), bytes(&body[..split]), bytes(b": ")];
    steps.extend((0..64).map(|_| bytes(&[b'c'; 4096])));
    steps.push(bytes(b"\r\n"));
    steps.push(bytes(&body[split..]));
    steps.push(Raw::Close);
    let (_up, p) = raw_proxy(move |_| steps.clone()).await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
}

// ------------------------------------------------------------------------------------------
// One byte at a time.

#[tokio::test]
async fn one_byte_at_a_time_arrives_byte_exact() {
    let body = answer_bytes(N);
    let every = ms(1);
    // Close-delimited, one byte per write.
    let b = Bytes::from(body.clone());
    let (_up, p) = raw_proxy(move |_| {
        vec![
            sse_head(Framing::Close, &[]),
            Raw::Drip(b.clone(), every),
            Raw::Close,
        ]
    })
    .await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
    // Chunked, one chunk per byte.
    let mut per_byte = Vec::new();
    for byte in &body {
        if let Raw::Bytes(c) = chunk(std::slice::from_ref(byte)) {
            per_byte.push(c);
        }
    }
    let (_up, p) = raw_proxy(move |_| {
        let mut steps = vec![sse_head(Framing::Chunked, &[])];
        for c in &per_byte {
            steps.push(Raw::Bytes(c.clone()));
            steps.push(Raw::Sleep(every));
        }
        steps.push(last_chunk());
        steps.push(Raw::Hang);
        steps
    })
    .await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
    // Gzip, one compressed byte per write.
    let gz = Bytes::from(compressed_pieces("gzip", N).await.concat());
    let (_up, p) = raw_proxy(move |_| {
        vec![
            sse_head(Framing::Close, &[("Content-Encoding", "gzip")]),
            Raw::Drip(gz.clone(), every),
            Raw::Close,
        ]
    })
    .await;
    let events = check(&p, End::Terminal).await;
    assert_eq!(text_of(&events), answer_text(N));
}
