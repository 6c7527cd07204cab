//! `sse-proxy demo`: a synthetic LLM backend on loopback with the proxy in front of it.

use crate::client_conn::Timeouts;
use crate::config::Config;
use crate::http_util::{self, ProxyBody, RequestBody};
use crate::listener;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

const SENTENCES: &[&str] = &[
    "Server-Sent Events keep one HTTP response open and write events as they happen.",
    "Each token of the answer used to travel as its own tiny event.",
    "The proxy groups tokens into batches, so the browser paints less often and the network carries fewer frames.",
    "Every event carries an id such as \"stream:42\", and a browser that reconnects sends the last one it saw.",
    "The answer is kept in a log, so a dropped connection resumes exactly where it stopped.",
    "The backend never generates the same answer twice, which saves real money on GPUs.",
    "Progress events estimate how long the answer will be, learned from the answers before it.",
    "Heartbeats keep idle connections alive through load balancers that close quiet sockets.",
    "Text may contain quotes (\"like this\"), back\\slashes, accents like café and naïve, and 日本語.",
    "Emoji travel fine too: 🚀 ✨.",
    "When the user presses Stop, the backend request is closed at once.",
    "A slow reader never builds a queue of small writes; it gets everything pending in one write.",
];

/// Answer length, in tokens, when the request names none (at the default rate, about 10 s: time
/// to press Drop connection or Stop by hand).
pub const DEFAULT_TOKENS: usize = 300;
/// Longest answer a request may ask for, in tokens.
pub const MAX_TOKENS: usize = 5000;
/// Mean token rate, in tokens per second, when the request names none.
pub const DEFAULT_RATE: f64 = 30.0;
/// Highest token rate a request may ask for; `rate=0` sends the tokens without pauses.
pub const MAX_RATE: f64 = 1000.0;
/// How long the model "thinks" before its first token, when the request names no `think_ms`.
pub const DEFAULT_THINK: Duration = Duration::from_millis(1000);
/// Longest `think_ms` a request may ask for.
const MAX_THINK_MS: u64 = 10_000;
/// The `thinking` event: what the page shows while the model has not answered yet.
const THINKING: &str = r#"{"status":"thinking","text":"Reading the question and planning an answer…"}"#;
/// The `sources` event sent before the first token, as a retrieval-augmented model would.
const SOURCES: &str = r#"{"sources":[{"title":"HTML Living Standard: Server-sent events","url":"https://html.spec.whatwg.org/multipage/server-sent-events.html"},{"title":"MDN: Using server-sent events","url":"https://developer.mozilla.org/en-US/docs/Web/API/Server-sent_events/Using_server-sent_events"}]}"#;

/// Deterministic answer tokens for a question, [`DEFAULT_TOKENS`] long (same question, same answer).
pub fn answer_tokens(question: &str) -> Vec<String> {
    answer_tokens_of(question, DEFAULT_TOKENS)
}

/// Deterministic answer tokens for a question: whole sentences, at least `min_tokens` tokens
/// (and at least one sentence), ending with the sentence that reaches it.
pub fn answer_tokens_of(question: &str, min_tokens: usize) -> Vec<String> {
    // FNV-1a of the question seeds the generator.
    let seed = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tokens = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    let mut i = 0usize;
    while i == 0 || tokens.len() < min_tokens {
        // Shuffled rounds of distinct sentences, so answers read naturally and differ per question.
        if order.is_empty() {
            order = (0..SENTENCES.len()).collect();
            order.shuffle(&mut rng);
        }
        let k = order.pop().unwrap_or(0);
        if i > 0 && i.is_multiple_of(3) {
            tokens.push("\n\n".to_string());
        }
        for (j, word) in SENTENCES[k].split(' ').enumerate() {
            let lead = if j == 0 && i.is_multiple_of(3) { "" } else { " " };
            tokens.push(format!("{lead}{word}"));
        }
        i += 1;
    }
    tokens
}

fn sse(event: Option<&str>, data: &str) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    crate::sse::encode_event(&mut buf, None, event, data);
    buf.freeze()
}

/// What a request asks of the synthetic model: `tokens`, `rate`, `think_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ask {
    tokens: usize,
    /// Mean tokens per second; 0 for no pauses.
    rate: f64,
    think: Duration,
}

impl Ask {
    /// Reads the query; a bad value is answered with what is allowed.
    fn from_query(uri: &http::Uri) -> Result<Ask, String> {
        let tokens = match crate::query::param(uri, "tokens") {
            None => DEFAULT_TOKENS,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_TOKENS).contains(n))
                .ok_or(format!("tokens must be a whole number from 1 to {MAX_TOKENS}"))?,
        };
        let rate = match crate::query::param(uri, "rate") {
            None => DEFAULT_RATE,
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=MAX_RATE).contains(r))
                .ok_or(format!(
                    "rate must be a number of tokens per second from 0 (no pauses) to {MAX_RATE}"
                ))?,
        };
        let think = match crate::query::param(uri, "think_ms") {
            None => DEFAULT_THINK,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= MAX_THINK_MS)
                .map(Duration::from_millis)
                .ok_or(format!(
                    "think_ms must be a whole number of milliseconds from 0 to {MAX_THINK_MS}"
                ))?,
        };
        Ok(Ask { tokens, rate, think })
    }

    /// The pause before the next token: the mean interval, jittered ±40% like a real model.
    fn pause(&self, rng: &mut StdRng) -> Duration {
        if self.rate == 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(rng.gen_range(0.6..1.4) / self.rate)
    }
}

/// The body of an answer: `thinking`, a pause, `sources`, the tokens, `done`.
fn answer_body(ask: Ask, tokens: Vec<String>) -> ProxyBody {
    let start = (0usize, tokens, StdRng::seed_from_u64(0));
    let s = futures_util::stream::unfold(start, move |(i, tokens, mut rng)| async move {
        let frame = if i == 0 {
            sse(Some("thinking"), THINKING)
        } else if i == 1 {
            tokio::time::sleep(ask.think).await;
            sse(Some("sources"), SOURCES)
        } else if i - 2 < tokens.len() {
            tokio::time::sleep(ask.pause(&mut rng)).await;
            sse(None, &serde_json::json!({ "content": tokens[i - 2] }).to_string())
        } else if i - 2 == tokens.len() {
            sse(Some("done"), r#"{"status":"complete"}"#)
        } else {
            return None;
        };
        Some((
            Ok::<_, crate::http_util::BoxError>(Frame::data(frame)),
            (i + 1, tokens, rng),
        ))
    });
    StreamBody::new(s).boxed_unsync()
}

/// The synthetic backend: `GET /api/question/stream?question=..[&tokens=N][&rate=R][&think_ms=MS]`
/// streams thinking, sources, tokens, done; `/api/question/text` answers the same text at once.
fn backend(req: &Request<RequestBody>) -> Response<ProxyBody> {
    let uri = req.uri();
    match uri.path() {
        path @ ("/api/question/stream" | "/api/question/text") => {
            let ask = match Ask::from_query(uri) {
                Ok(ask) => ask,
                Err(m) => return http_util::error(StatusCode::BAD_REQUEST, "bad_request", &m),
            };
            let question = crate::query::param(uri, "question").unwrap_or_default();
            let tokens = answer_tokens_of(&question, ask.tokens);
            if path == "/api/question/text" {
                return http_util::json(
                    StatusCode::OK,
                    &serde_json::json!({ "answer": tokens.concat(), "tokens": tokens.len() }),
                );
            }
            let mut resp = Response::new(answer_body(ask, tokens));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        "/" => {
            let mut resp = http_util::status(StatusCode::FOUND);
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/_sse-proxy/demo"));
            resp
        }
        _ => http_util::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the demo backend serves /api/question/stream",
        ),
    }
}

/// Connections the demo backend serves at once (the proxy in front pools its connections).
const BACKEND_MAX_CONNECTIONS: usize = 256;

/// Starts the synthetic backend on a loopback port; returns its address.
pub async fn start_backend(stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let opts = listener::Options {
        name: "demo backend",
        timeouts: Timeouts {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        },
        slots: Arc::new(Semaphore::new(BACKEND_MAX_CONNECTIONS)),
        awaiting: crate::client_conn::AwaitingHead::new(),
        drain: Duration::from_secs(1),
        metrics: None,
    };
    let handler = |req: Request<RequestBody>, _peer: SocketAddr| std::future::ready(backend(&req));
    tokio::spawn(listener::serve(listener, opts, stop, handler));
    Ok(addr)
}

/// The answer lengths the demo page offers (its models `demo-short`, `demo`, `demo-long`).
const PAGE_LENGTHS: [usize; 3] = [80, DEFAULT_TOKENS, 1000];

/// The demo's configuration in front of a backend at `upstream`.
pub fn config(
    upstream: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
) -> Result<Config, crate::config::ConfigError> {
    let text = format!(
        r#"
[server]
listen = "{listen}"
admin_listen = "{admin}"
shutdown_grace = "2s"

[upstream]
url = "http://{upstream}"

[[stream]]
path = "/api/question/stream"
token_path = "/content"
model_from = "query:model"

# Priors for the demo page's lengths (short, medium = the default, long).
[[progress.model]]
name = "demo-short"
expected_tokens = {short}
tokens_per_second = {rate}

[[progress.model]]
name = "demo"
expected_tokens = {DEFAULT_TOKENS}
tokens_per_second = {rate}

[[progress.model]]
name = "demo-long"
expected_tokens = {long}
tokens_per_second = {rate}

[demo]
enabled = true
"#,
        short = PAGE_LENGTHS[0],
        long = PAGE_LENGTHS[2],
        rate = DEFAULT_RATE,
    );
    Config::from_toml_str(&text, "<demo>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_deterministic_and_varied() {
        let a = answer_tokens("why is the sky blue?");
        assert_eq!(a, answer_tokens("why is the sky blue?"));
        assert_ne!(a.concat(), answer_tokens("what is SSE?").concat());
        assert!(a.len() > 50, "{}", a.len());
    }

    #[test]
    fn answers_have_the_length_asked_for_in_whole_sentences() {
        for n in [1, 10, 80, DEFAULT_TOKENS, 1000, MAX_TOKENS] {
            let a = answer_tokens_of("q", n);
            assert!(a.len() >= n, "{n}: {}", a.len());
            let text = a.concat();
            assert!(
                text.ends_with('.') || text.ends_with(':') || text.ends_with(")."),
                "{n}: {text:?}"
            );
            // At most one sentence (and a paragraph break) beyond the length asked for.
            assert!(a.len() < n + 30, "{n}: {}", a.len());
        }
        assert_eq!(answer_tokens("q"), answer_tokens_of("q", DEFAULT_TOKENS));
        let long = answer_tokens_of("q", 1000).concat();
        assert!(long.starts_with(&answer_tokens_of("q", 80).concat()));
    }

    fn ask(query: &str) -> Result<Ask, String> {
        Ask::from_query(&format!("/api/question/stream?{query}").parse().expect("uri"))
    }

    #[test]
    fn the_query_picks_length_rate_and_thinking_time() {
        let default = Ask {
            tokens: DEFAULT_TOKENS,
            rate: DEFAULT_RATE,
            think: DEFAULT_THINK,
        };
        assert_eq!(ask("question=x"), Ok(default));
        assert_eq!(
            ask("tokens=80&rate=120&think_ms=0"),
            Ok(Ask {
                tokens: 80,
                rate: 120.0,
                think: Duration::ZERO
            })
        );
        assert_eq!(ask("rate=0").map(|a| a.rate), Ok(0.0));
        for bad in [
            "tokens=0",
            "tokens=5001",
            "tokens=x",
            "rate=-1",
            "rate=1001",
            "rate=NaN",
            "think_ms=10001",
            "think_ms=-1",
        ] {
            let e = ask(bad).expect_err(bad);
            let name = bad.split('=').next().unwrap_or_default();
            assert!(e.starts_with(name), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_query_value_is_a_400_saying_what_is_allowed() {
        for path in ["/api/question/stream", "/api/question/text"] {
            let req = Request::get(format!("{path}?question=x&tokens=0"))
                .body(http_util::request_body(""))
                .expect("request");
            let resp = backend(&req);
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        }
        let req = Request::get("/api/question/text?question=x&tokens=80")
            .body(http_util::request_body(""))
            .expect("request");
        assert_eq!(backend(&req).status(), StatusCode::OK);
    }

    /// The upstream events of an answer, with the paused-clock time each arrived at.
    async fn events_of(ask: Ask, tokens: Vec<String>) -> Vec<(Duration, crate::sse::Event)> {
        let start = tokio::time::Instant::now();
        let mut body = answer_body(ask, tokens);
        let mut parser = crate::sse::Parser::new(1 << 20);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.ok().and_then(|f| f.into_data().ok()).expect("data");
            parser.feed(data).expect("valid SSE");
            while let Some(e) = parser.next_event() {
                out.push((start.elapsed(), e));
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn the_model_thinks_names_its_sources_then_answers() {
        let tokens = answer_tokens_of("q", 60);
        let ask = Ask {
            tokens: 60,
            rate: 30.0,
            think: DEFAULT_THINK,
        };
        let events = events_of(ask, tokens.clone()).await;
        let kinds: Vec<&str> = events.iter().map(|(_, e)| e.event.as_str()).collect();
        assert_eq!(kinds[..2], ["thinking", "sources"]);
        assert_eq!(kinds[kinds.len() - 1], "done");
        assert!(kinds[2..kinds.len() - 1].iter().all(|k| *k == "message"));
        assert_eq!(kinds.len(), tokens.len() + 3);
        let thinking: serde_json::Value = serde_json::from_str(events[0].1.data.as_str()).expect("json");
        assert!(
            thinking["text"].as_str().is_some_and(|t| !t.is_empty()),
            "{thinking}"
        );
        let sources: serde_json::Value = serde_json::from_str(events[1].1.data.as_str()).expect("json");
        assert_eq!(sources["sources"].as_array().map(Vec::len), Some(2), "{sources}");
        // Thinking is shown for the whole thinking time, before the first token.
        assert_eq!(events[0].0, Duration::ZERO);
        assert_eq!(events[1].0, DEFAULT_THINK);
        // The tokens come at the asked rate on average (±40% per token).
        let answering = events[events.len() - 1].0 - events[1].0;
        let expected = Duration::from_secs_f64(tokens.len() as f64 / 30.0);
        assert!(
            answering > expected.mul_f64(0.6) && answering < expected.mul_f64(1.4),
            "{answering:?}"
        );
        let text: String = events[2..events.len() - 1]
            .iter()
            .map(|(_, e)| {
                serde_json::from_str::<serde_json::Value>(e.data.as_str()).expect("json")["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(text, tokens.concat());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_zero_sends_without_pauses() {
        let ask = Ask {
            tokens: 20,
            rate: 0.0,
            think: Duration::ZERO,
        };
        let events = events_of(ask, answer_tokens_of("q", 20)).await;
        assert!(events.iter().all(|(t, _)| *t == Duration::ZERO));
    }

    #[test]
    fn demo_config_is_valid() {
        let c = config(
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("valid");
        assert!(c.demo.enabled);
    }
}
