//! "Stop generating": `POST /_sse-proxy/streams/{sid}/cancel`, and `resume.on_disconnect = cancel`.

mod common;

use common::*;
use sse_proxy::config::{OnDisconnect, SourceSpec};
use sse_proxy::stream::{Outcome, State};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const ALICE: &str = "Bearer alice";

fn with_identity(c: &mut sse_proxy::config::Config) {
    c.identity.from = Some(SourceSpec::Header(http::header::AUTHORIZATION));
}

/// A long answer: `n` tokens `gap` apart.
async fn mock_long(n: usize, gap: Duration) -> (MockUpstream, Vec<String>) {
    let tokens: Vec<String> = (0..n).map(|i| format!("c{i} ")).collect();
    let t = tokens.clone();
    (
        MockUpstream::start(move |_, _| Reply::sse(answer(&t, gap))).await,
        tokens,
    )
}

async fn cancel(p: &TestProxy, sid: &str, auth: Option<&str>) -> (http::StatusCode, bytes::Bytes) {
    let url = format!("http://{}/_sse-proxy/streams/{sid}/cancel", p.addr);
    let h: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    let resp = send("POST", &url, &h, "").await;
    let status = resp.status();
    (status, body_bytes(resp).await)
}

fn finished_total(text: &str, outcome: &str) -> f64 {
    metric(
        text,
        &format!("sse_proxy_streams_finished_total{{outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn owner_cancel_stops_the_upstream_and_ends_every_follower() {
    let (up, tokens) = mock_long(400, ms(10)).await;
    let p = proxy(up.addr, with_identity).await;
    let before = metrics_text(p.admin).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[("authorization", ALICE)]).await;
    let sid = stream_id_of(&resp);
    let mut a = Events::new(resp);
    let mut a_events = a.take(4).await;
    let resp = get(
        &format!("http://{}/stream", p.addr),
        &[("authorization", ALICE), ("last-event-id", &format!("{sid}:0"))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut b = Events::new(resp);
    let mut b_events = b.take(2).await;

    let (status, body) = cancel(&p, &sid, Some(ALICE)).await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let v = json_of(&body);
    assert_eq!(v["stream_id"], sid.as_str());
    assert_eq!(v["cancelled"], true);
    assert!(
        up.wait_closed(1, WAIT).await,
        "the upstream connection was closed"
    );

    // Both followers: the partial answer, `done` with cancelled, then the end of the body.
    a_events.extend(a.all().await);
    b_events.extend(b.all().await);
    assert_gapless(&a_events, 1);
    assert_eq!(a_events, b_events);
    let done = a_events.last().expect("events");
    assert_eq!(done.event, "done");
    let total: u64 = a_events
        .iter()
        .filter(|e| e.event == "message")
        .map(|e| e.json()["batch_size"].as_u64().expect("batch_size"))
        .sum();
    assert_eq!(
        done.json(),
        serde_json::json!({ "total_tokens": total, "cancelled": true })
    );
    let text = text_of(&a_events);
    assert!(text.len() < tokens.concat().len() && tokens.concat().starts_with(&text));

    // Later: the whole partial answer and its done again.
    let resp = get(
        &format!("http://{}/stream", p.addr),
        &[("authorization", ALICE), ("last-event-id", &format!("{sid}:0"))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(Events::new(resp).all().await, a_events);
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("held");
    assert!(matches!(stream.state(), State::Finished(Outcome::Cancelled, _)));
    assert_eq!(up.requests(), 1);

    let after = metrics_text(p.admin).await;
    assert_eq!(
        finished_total(&after, "cancelled") - finished_total(&before, "cancelled"),
        1.0
    );
}

#[tokio::test]
async fn foreign_cancel_is_the_same_404_as_unknown_and_changes_nothing() {
    let (up, tokens) = mock_long(80, ms(5)).await;
    let p = proxy(up.addr, with_identity).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[("authorization", ALICE)]).await;
    let sid = stream_id_of(&resp);
    let mut evs = Events::new(resp);
    let mut events = evs.take(2).await;

    let (status, reference) = cancel(&p, &forged_stream_id(), Some(ALICE)).await;
    assert_eq!(status, 404);
    let v = json_of(&reference);
    assert!(v["error"].is_string() && v["message"].is_string(), "{v}");
    for (what, id, auth) in [
        ("other identity", sid.as_str(), Some("Bearer mallory")),
        ("no identity", sid.as_str(), None),
        ("malformed id", "not-a-stream-id", Some(ALICE)),
    ] {
        let (status, body) = cancel(&p, id, auth).await;
        assert_eq!(status, 404, "{what}");
        assert_eq!(body, reference, "{what}: the same body as an unknown id");
    }

    // The stream went on to its end.
    events.extend(evs.all().await);
    assert_gapless(&events, 1);
    assert_eq!(text_of(&events), tokens.concat());
    assert_upstream_done(&events);
    assert_eq!(up.closed_early(), 0);
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("held");
    assert!(matches!(stream.state(), State::Finished(Outcome::Completed, _)));
}

#[tokio::test]
async fn cancel_of_a_finished_stream_is_409_and_changes_nothing() {
    let (up, tokens) = mock_long(20, ms(1)).await;
    let p = proxy(up.addr, |_| {}).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let events = Events::new(resp).all().await;
    assert_eq!(text_of(&events), tokens.concat());
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("held");
    assert!(wait_for(WAIT, || matches!(stream.state(), State::Finished(..))).await);

    let (status, body) = cancel(&p, &sid, None).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["error"], "stream_finished");
    assert!(matches!(stream.state(), State::Finished(Outcome::Completed, _)));
    let last = events.last().expect("events");
    assert_eq!(last.event, "done");
    // The log is unchanged: resuming after the last event is still 204, from 0 the same events.
    let r = get(
        &format!("http://{}/stream", p.addr),
        &[("last-event-id", last.id.as_deref().expect("id"))],
    )
    .await;
    assert_eq!(r.status(), 204);
    let r = get(
        &format!("http://{}/stream", p.addr),
        &[("last-event-id", &format!("{sid}:0"))],
    )
    .await;
    assert_eq!(Events::new(r).all().await, events);
}

#[tokio::test]
async fn on_disconnect_cancel_closes_the_upstream_when_the_last_client_leaves() {
    let (up, _) = mock_long(400, ms(10)).await;
    let p = proxy(up.addr, |c| c.resume.on_disconnect = OnDisconnect::Cancel).await;
    let resp = get(&format!("http://{}/stream", p.addr), &[]).await;
    let sid = stream_id_of(&resp);
    let mut a = Events::new(resp);
    a.take(2).await;
    let resp = get(
        &format!("http://{}/stream", p.addr),
        &[("last-event-id", &format!("{sid}:0"))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut b = Events::new(resp);
    b.take(2).await;

    // One of two leaves: the stream goes on.
    drop(a);
    let stream = p.app.registry.get(&parse_stream_id(&sid)).expect("held");
    assert!(wait_for(WAIT, || stream.followers() == 1).await);
    // Tokens still come after the leave: the stream went on.
    let after_leave = stream.tokens();
    assert!(wait_for(WAIT, || stream.tokens() >= after_leave + 3).await);
    assert_eq!(up.closed_early(), 0);
    assert_eq!(stream.state(), State::Running);
    b.take(2).await;

    // The last one leaves: the upstream is closed at once.
    drop(b);
    assert!(
        up.wait_closed(1, WAIT).await,
        "the upstream was closed when the last client left"
    );
    assert!(wait_for(WAIT, || stream.state() != State::Running).await);
    assert!(matches!(stream.state(), State::Finished(Outcome::Cancelled, _)));
    assert_eq!(up.requests(), 1);
    // The partial answer stays resumable and ends like a Stop.
    let resp = get(
        &format!("http://{}/stream", p.addr),
        &[("last-event-id", &format!("{sid}:0"))],
    )
    .await;
    let events = Events::new(resp).all().await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "done");
    assert_eq!(last.json()["cancelled"], true);
}
