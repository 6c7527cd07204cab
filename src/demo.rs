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

/// Deterministic answer tokens for a question (same question, same answer).
pub fn answer_tokens(question: &str) -> Vec<String> {
    // FNV-1a of the question seeds the generator.
    let seed = question.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    // A shuffled selection of distinct sentences, so answers read naturally and differ per question.
    let mut order: Vec<usize> = (0..SENTENCES.len()).collect();
    order.shuffle(&mut rng);
    let count = rng.gen_range(7..=11);
    let mut tokens = Vec::new();
    for (i, &k) in order.iter().take(count).enumerate() {
        if i > 0 && i % 3 == 0 {
            tokens.push("\n\n".to_string());
        }
        for (j, word) in SENTENCES[k].split(' ').enumerate() {
            let lead = if j == 0 && i % 3 == 0 { "" } else { " " };
            tokens.push(format!("{lead}{word}"));
        }
    }
    tokens
}

fn sse(event: Option<&str>, data: &str) -> Bytes {
    let mut buf = bytes::BytesMut::new();
    crate::sse::encode_event(&mut buf, None, event, data);
    buf.freeze()
}

/// The synthetic backend: `GET /api/question/stream?question=..` streams thinking, tokens, done.
fn backend(req: &Request<RequestBody>) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    match uri.path() {
        "/api/question/stream" => {
            let q = crate::query::param(&uri, "question").unwrap_or_default();
            let tokens = answer_tokens(&q);
            let start = (0usize, tokens, StdRng::seed_from_u64(0));
            let s = futures_util::stream::unfold(start, |(i, tokens, mut rng)| async move {
                let frame = if i == 0 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    sse(Some("thinking"), r#"{"status":"thinking"}"#)
                } else if i <= tokens.len() {
                    // 30-60 tokens/s, jittered like a real model.
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(16..34))).await;
                    sse(None, &serde_json::json!({ "content": tokens[i - 1] }).to_string())
                } else if i == tokens.len() + 1 {
                    sse(Some("done"), r#"{"status":"complete"}"#)
                } else {
                    return None;
                };
                Some((
                    Ok::<_, crate::http_util::BoxError>(Frame::data(frame)),
                    (i + 1, tokens, rng),
                ))
            });
            let mut resp = Response::new(StreamBody::new(s).boxed_unsync());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            resp
        }
        "/api/question/text" => {
            let q = crate::query::param(&uri, "question").unwrap_or_default();
            let tokens = answer_tokens(&q);
            http_util::json(
                StatusCode::OK,
                &serde_json::json!({ "answer": tokens.concat(), "tokens": tokens.len() }),
            )
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
        drain: Duration::from_secs(1),
        metrics: None,
    };
    let handler = |req: Request<RequestBody>, _peer: SocketAddr| std::future::ready(backend(&req));
    tokio::spawn(listener::serve(listener, opts, stop, handler));
    Ok(addr)
}

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

[[progress.model]]
name = "demo"
expected_tokens = 150
tokens_per_second = 40.0

[demo]
enabled = true
"#
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
