//! Client connections on real sockets: silent and half-open connections are closed after
//! `server.header_read_timeout`, idle keep-alive ones after `server.idle_timeout` (h2 with GOAWAY),
//! long streams are never cut, and `max_connections` shows in `/readyz` and the metrics. The admin
//! listener gets the same deadlines and a small connection cap of its own.

mod common;

use common::h2raw::{self, RawFrame};
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Reads one response of the plain mock from `s`: its head and its chunked body as framed on the
/// wire.
async fn read_chunked(s: &mut TcpStream) -> (String, Vec<u8>) {
    let (head, body) = tcp::read_response(s).await;
    assert!(
        head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );
    (head, body)
}

/// Openings after which a client sends nothing more: none at all, part of the h2 preface, the
/// preface without a request.
fn silent_openings() -> Vec<(&'static str, Vec<u8>)> {
    let mut preface_only = h2raw::PREFACE.to_vec();
    preface_only.extend(h2raw::frame(h2raw::SETTINGS, 0, 0, &[]));
    vec![
        ("no byte at all", Vec::new()),
        ("part of the h2 preface", h2raw::PREFACE[..16].to_vec()),
        ("the h2 preface and no request", preface_only),
    ]
}

/// Sends each case's bytes on a connection of its own to `addr`, all at once, and asserts the
/// proxy closes every one of them.
async fn assert_each_closed(addr: SocketAddr, cases: Vec<(&'static str, Vec<u8>)>, what: &str) {
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(name, bytes)| {
            tokio::spawn(async move {
                let mut s = tcp::open(addr, &bytes).await;
                (name, tcp::closed_by_peer(&mut s).await)
            })
        })
        .collect();
    for t in tasks {
        let (name, closed) = t.await.expect("join");
        assert!(closed, "{name}: {what} was not closed");
    }
}

async fn readyz(admin: SocketAddr) -> (u16, serde_json::Value) {
    let resp = get(&format!("http://{admin}/readyz"), &[]).await;
    let status = resp.status().as_u16();
    (status, json_of(&body_bytes(resp).await))
}

/// Polls `/readyz` until it answers `status`; returns whether it did within `WAIT`.
async fn readyz_becomes(admin: SocketAddr, status: u16) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if readyz(admin).await.0 == status {
            return true;
        }
        tokio::time::sleep(ms(10)).await;
    }
    false
}

async fn plain_upstream() -> MockUpstream {
    MockUpstream::start(|_, _| Reply::plain(200, "text/plain", "fine")).await
}

/// The plain mock behind a proxy that closes idle connections after 300 ms. A request head may
/// take a minute: only the idle timeout can close a connection in time.
async fn idle_proxy() -> (MockUpstream, TestProxy) {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = Duration::from_secs(60);
        c.server.idle_timeout.0 = ms(300);
    })
    .await;
    (up, p)
}

const GET_ONE: &[u8] = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test]
async fn silent_and_half_open_connections_are_closed_after_header_read_timeout() {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |c| c.server.header_read_timeout.0 = ms(200)).await;
    let mut cases = silent_openings();
    cases.push(("one byte", b"G".to_vec()));
    cases.push((
        "part of an HTTP/1.1 head",
        b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(),
    ));
    let addr = p.addr;
    assert_each_closed(addr, cases, "the connection").await;
    assert_eq!(up.requests(), 0);
    // The proxy still serves.
    let resp = get(&format!("http://{addr}/after"), &[]).await;
    assert_eq!(body_bytes(resp).await, "fine");
}

#[tokio::test]
async fn at_max_connections_readyz_is_503_and_silent_sockets_do_not_keep_real_clients_out() {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = ms(300);
        c.server.max_connections = 2;
    })
    .await;
    let rejected = "sse_proxy_rejected_total{reason=\"max_connections\"}";
    let before = metric(&metrics_text(p.admin).await, rejected);
    assert_eq!(readyz(p.admin).await.0, 200);
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tcp::connect(p.addr).await);
    }
    assert!(
        readyz_becomes(p.admin, 503).await,
        "readyz stays 200 at max_connections"
    );
    let (_, body) = readyz(p.admin).await;
    assert_eq!(body["status"], "at_capacity", "{body}");
    // A real client is served: one silent socket makes room, the other times out.
    let resp = get(&format!("http://{}/real", p.addr), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp).await, "fine");
    for s in &mut silent {
        assert!(tcp::closed_by_peer(s).await, "a silent socket was not closed");
    }
    assert!(
        readyz_becomes(p.admin, 200).await,
        "readyz stays 503 below max_connections"
    );
    let after = metric(&metrics_text(p.admin).await, rejected);
    assert!(after > before, "{rejected}: {before} -> {after}");
}

#[tokio::test]
async fn idle_http1_keep_alive_is_closed_after_idle_timeout() {
    let (_up, p) = idle_proxy().await;
    let mut s = tcp::open(p.addr, GET_ONE).await;
    let (head, body) = read_chunked(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"4\r\nfine\r\n0\r\n\r\n");
    let (rest, end) = tcp::read_to_end(&mut s, WAIT).await;
    assert_eq!(
        end,
        tcp::End::Closed,
        "the idle connection was not closed in time, or was reset"
    );
    assert!(
        rest.is_empty(),
        "sent after the response: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn idle_h2c_connection_gets_goaway_after_idle_timeout() {
    let (_up, p) = idle_proxy().await;
    let mut s = tcp::connect(p.addr).await;
    h2raw::handshake(&mut s).await.expect("handshake");
    s.write_all(&h2raw::get_request(1, "/one"))
        .await
        .expect("request");
    let end_of_answer = |f: &RawFrame| {
        f.stream == 1 && matches!(f.kind, h2raw::DATA | h2raw::HEADERS) && f.flags & h2raw::END_STREAM != 0
    };
    tokio::time::timeout(WAIT, h2raw::read_until(&mut s, end_of_answer))
        .await
        .expect("answer in time")
        .expect("the answer");
    let goaway = tokio::time::timeout(WAIT, h2raw::read_until(&mut s, |f| f.kind == h2raw::GOAWAY))
        .await
        .expect("no GOAWAY on the idle connection")
        .expect("GOAWAY before the connection closed");
    // Error code NO_ERROR: a graceful close.
    assert_eq!(goaway.payload.get(4..8), Some(&[0u8, 0, 0, 0][..]), "{goaway:?}");
    let end = tokio::time::timeout(WAIT, h2raw::read_until(&mut s, |_| false))
        .await
        .expect("the connection closes after GOAWAY");
    assert!(end.is_none());
}

#[tokio::test]
async fn a_later_request_head_must_also_arrive_within_header_read_timeout() {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = ms(300);
        c.server.idle_timeout.0 = Duration::from_secs(60);
    })
    .await;
    let mut s = tcp::open(p.addr, GET_ONE).await;
    let (head, _) = read_chunked(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"GET /two HTTP/1.1\r\nHo").await.expect("write");
    assert!(
        tcp::closed_by_peer(&mut s).await,
        "a half-sent second head kept the connection"
    );
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn streams_longer_than_idle_timeout_are_not_cut() {
    let tokens: Vec<String> = (0..12).map(|i| format!("t{i} ")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |_, _| Reply::sse(answer(&t2, ms(100)))).await;
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = ms(200);
        c.server.idle_timeout.0 = ms(200);
    })
    .await;
    let events = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await)
        .all()
        .await;
    assert_eq!(text_of(&events), tokens.concat(), "HTTP/1.1");
    assert_eq!(events.last().expect("events").event, "done");

    let req = http::Request::get(format!("http://{}/stream", p.addr))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let resp = send_on(&h2c_client(), req).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let events = Events::new(resp).all().await;
    assert_eq!(text_of(&events), tokens.concat(), "h2c");
    assert_eq!(events.last().expect("events").event, "done");
}

#[tokio::test]
async fn at_max_connections_a_socket_that_sent_no_request_makes_room_for_a_new_one() {
    let up = plain_upstream().await;
    // No timeout can explain a quick answer here: a request head may take a minute.
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = Duration::from_secs(60);
        c.server.max_connections = 2;
    })
    .await;
    let mut oldest = tcp::connect(p.addr).await;
    let slots = p.app.connections.clone();
    assert!(
        wait_for(WAIT, || slots.available_permits() == 1).await,
        "not accepted"
    );
    let mut newer = tcp::connect(p.addr).await;
    assert!(
        readyz_becomes(p.admin, 503).await,
        "readyz stays 200 at max_connections"
    );
    let resp = get(&format!("http://{}/real", p.addr), &[]).await;
    assert_eq!(body_bytes(resp).await, "fine");
    assert!(
        tcp::closed_by_peer(&mut oldest).await,
        "the oldest silent socket was kept"
    );
    // The newer one is still open: writing a request now gets it served.
    newer
        .write_all(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_chunked(&mut newer).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn at_max_connections_a_connection_with_a_request_in_flight_is_never_closed() {
    let tokens: Vec<String> = (0..8).map(|i| format!("t{i} ")).collect();
    let t2 = tokens.clone();
    let up = MockUpstream::start(move |parts, _| match parts.uri.path() {
        "/stream" => Reply::sse(answer(&t2, ms(100))),
        _ => Reply::plain(200, "text/plain", "fine"),
    })
    .await;
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = Duration::from_secs(60);
        // The client may keep the stream's connection open once the stream ends.
        c.server.idle_timeout.0 = ms(300);
        c.server.max_connections = 1;
    })
    .await;
    let mut stream = Events::new(get(&format!("http://{}/stream", p.addr), &[]).await);
    assert_eq!(stream.next().await.expect("first event").event, "thinking");
    // Queued behind the stream, not served by closing it.
    let url = format!("http://{}/late", p.addr);
    let late = tokio::spawn(async move { get(&url, &[]).await });
    let events = stream.all().await;
    assert_eq!(text_of(&events), tokens.concat());
    assert_eq!(events.last().expect("events").event, "done");
    let resp = tokio::time::timeout(WAIT, late)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(body_bytes(resp).await, "fine");
}

#[tokio::test]
async fn the_admin_listener_closes_silent_connections_after_header_read_timeout() {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |c| c.server.header_read_timeout.0 = ms(200)).await;
    let admin = p.admin;
    assert_each_closed(admin, silent_openings(), "the admin connection").await;
    assert_eq!(readyz(admin).await.0, 200);
}

#[tokio::test]
async fn the_admin_listener_caps_its_connections_and_silent_ones_make_room() {
    let up = plain_upstream().await;
    // No timeout can explain a closed socket here: a request head may take a minute.
    let p = proxy(up.addr, |c| {
        c.server.header_read_timeout.0 = Duration::from_secs(60)
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..sse_proxy::admin::MAX_CONNECTIONS {
        silent.push(tcp::connect(p.admin).await);
    }
    // One more connection is over the cap: the oldest silent one is closed to make room for it.
    let (status, body) = readyz(p.admin).await;
    assert_eq!((status, &body["status"]), (200, &serde_json::json!("ready")));
    assert!(
        tcp::closed_by_peer(&mut silent[0]).await,
        "the admin listener kept more than {} connections",
        sse_proxy::admin::MAX_CONNECTIONS
    );
    // The others are still open: a request on the newest is answered.
    let newest = silent.last_mut().expect("sockets");
    newest
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let head = tcp::read_head(newest).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test]
async fn an_h2c_preface_in_pieces_is_still_served_as_http2() {
    let up = plain_upstream().await;
    let p = proxy(up.addr, |_| {}).await;
    let mut s = tcp::connect(p.addr).await;
    // "P" could start POST too; "PR" only the preface.
    for piece in [&h2raw::PREFACE[..1], &h2raw::PREFACE[1..2], &h2raw::PREFACE[2..]] {
        s.write_all(piece).await.expect("write");
        s.flush().await.expect("flush");
    }
    s.write_all(&h2raw::frame(h2raw::SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    s.write_all(&h2raw::get_request(1, "/one"))
        .await
        .expect("request");
    let response = |f: &RawFrame| f.stream == 1 && f.kind == h2raw::HEADERS;
    let head = tokio::time::timeout(WAIT, h2raw::read_until(&mut s, response))
        .await
        .expect("answer in time")
        .expect("an HTTP/2 response");
    // `:status 200`, indexed in HPACK's static table.
    assert_eq!(head.payload.first(), Some(&0x88), "{head:?}");
    assert_eq!(up.requests(), 1);
}
