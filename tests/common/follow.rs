//! A client that follows one stream to its end the way the browser client does: when a response
//! ends without the stream's last event, or the connection cannot be made, it asks again with
//! `Last-Event-ID` until it gets `done` or an `error` event.

use super::{client, Ev, Events, WAIT};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use std::time::Duration;

/// Pause before asking again after a failed connection or a `503` (a replica that stopped
/// listening is skipped by the balancer at once; this only paces a client with none to go to).
const PAUSE: Duration = Duration::from_millis(50);

/// What a client following one stream saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// Every event, in the order received.
    pub events: Vec<Ev>,
    /// The raw bytes of each `200` response, in order.
    pub responses: Vec<Vec<u8>>,
    /// For each reconnection, the time from the last event before it to the first one after it.
    pub pauses: Vec<Duration>,
}

impl Followed {
    /// The last event, `done` or `error` when the stream ended.
    pub fn last(&self) -> Option<&Ev> {
        self.events.last()
    }
}

/// GET `url` with headers; `None` when no response comes (connection refused or reset).
pub async fn try_get(url: &str, headers: &[(&str, &str)]) -> Option<Response<Incoming>> {
    let mut b = Request::builder().method("GET").uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(bytes::Bytes::new())).ok()?;
    tokio::time::timeout(WAIT, client().request(req)).await.ok()?.ok()
}

fn ended(e: &Ev) -> bool {
    e.event == "done" || e.event == "error"
}

/// Reads the rest of `first` (a stream response whose events `seen` were read already), then
/// resumes at `reconnect` after the last event it has until the stream's last event.
pub async fn follow(first: Events, seen: Vec<Ev>, reconnect: &str) -> Followed {
    let mut last_id = seen.iter().rev().find_map(|e| e.id.clone());
    let mut out = Followed {
        events: seen,
        responses: Vec::new(),
        pauses: Vec::new(),
    };
    let mut current = Some(first);
    let mut last_at = std::time::Instant::now();
    let mut reconnected = false;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream did not end: {out:?}"
        );
        let mut evs = match current.take() {
            Some(evs) => evs,
            None => {
                let id = last_id.clone().expect("an event id to resume from");
                let Some(r) = try_get(reconnect, &[("last-event-id", &id)]).await else {
                    tokio::time::sleep(PAUSE).await;
                    continue;
                };
                match r.status().as_u16() {
                    200 => {
                        reconnected = true;
                        Events::new(r)
                    }
                    204 => return out,
                    503 => {
                        tokio::time::sleep(PAUSE).await;
                        continue;
                    }
                    s => panic!("status {s} resuming after {last_id:?}"),
                }
            }
        };
        while let Some(e) = evs.next().await {
            if std::mem::take(&mut reconnected) {
                out.pauses.push(last_at.elapsed());
            }
            last_at = std::time::Instant::now();
            last_id = e.id.clone().or(last_id);
            let end = ended(&e);
            out.events.push(e);
            if end {
                out.responses.push(evs.raw);
                return out;
            }
        }
        out.responses.push(evs.raw);
    }
}
