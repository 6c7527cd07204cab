//! Ordinary requests: forwarded unchanged and streamed both ways. HTTP/1.1 upgrades (WebSocket)
//! are tunnelled once the backend answers `101 Switching Protocols`.

use super::respond::upstream_error;
use crate::app::App;
use crate::http_util::{self, BodyError, ClientBody, ProxyBody, RequestBody};
use crate::metrics::{RejectReason, StatusClass};
use crate::upstream::{client_host, forward_headers, strip_hop_by_hop, Upstream};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Forwards a request to the backend and streams its answer back.
pub async fn handle(
    app: &App,
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let upgrade = upgrade_protocol(req.headers()).map(|proto| (proto, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match upstream.uri_for(pq) {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "request target refused");
            return upstream_error(&app.metrics, &e);
        }
    };
    let host = client_host(&parts);
    forward_headers(&mut parts.headers, host, peer);
    if let Some((proto, _)) = &upgrade {
        // Upgrade is hop-by-hop, but asking the backend for the same upgrade is the point.
        set_upgrade(&mut parts.headers, proto.clone());
    }
    parts.uri = uri;
    let (body, client_failed) = ClientBody::new(body);
    let upstream_req = Request::from_parts(parts, body.boxed_unsync());
    match upstream.send(upstream_req).await {
        Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => match upgrade {
            Some((_, client)) => tunnel(app, client, resp),
            None => http_util::error(
                StatusCode::BAD_GATEWAY,
                "upstream_bad_upgrade",
                "the backend switched protocols without being asked to",
            ),
        },
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            app.metrics.passthrough.increment(StatusClass::of(parts.status));
            Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
        }
        Err(e) => match client_failed.get() {
            // The backend request failed because the client's body did: not the backend's fault.
            Some(detail) => BodyError::Broken(detail.to_string()).response(&app.metrics),
            None => {
                tracing::warn!(error = %e, "passthrough failed");
                upstream_error(&app.metrics, &e)
            }
        },
    }
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` plus `Upgrade: ...`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = http_util::connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

fn set_upgrade(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, proto);
}

/// Answers `101` to the client and copies bytes both ways between the two upgraded connections.
fn tunnel(app: &App, client: OnUpgrade, mut resp: Response<Incoming>) -> Response<ProxyBody> {
    let Ok(permit) = app.tunnels.clone().try_acquire_owned() else {
        app.metrics.rejected.increment(RejectReason::MaxConnections);
        return http_util::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_tunnels",
            "too many upgraded connections",
        );
    };
    let upstream = hyper::upgrade::on(&mut resp);
    let proto = resp.headers().get(header::UPGRADE).cloned();
    tokio::spawn(async move {
        let _permit = permit;
        match tokio::try_join!(client, upstream) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(p) = proto {
        set_upgrade(&mut parts.headers, p);
    }
    Response::from_parts(parts, http_util::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrade_requests() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(
            upgrade_protocol(&h),
            None,
            "Upgrade alone is not a request to upgrade"
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_protocol(&h), Some(HeaderValue::from_static("websocket")));
        h.remove(header::UPGRADE);
        assert_eq!(upgrade_protocol(&h), None);
    }
}
