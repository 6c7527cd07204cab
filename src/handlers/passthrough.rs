//! Ordinary requests: forwarded unchanged and streamed both ways.

use crate::app::App;
use crate::http_util::ProxyBody;
use crate::upstream::{client_host, forward_headers, strip_hop_by_hop};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;

/// Forwards a request to the backend and streams its answer back.
pub async fn handle(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = match app.upstream.uri_for(pq) {
        Ok(u) => u,
        Err(e) => return super::upstream_error(&e),
    };
    let host = client_host(&parts);
    forward_headers(&mut parts.headers, host, peer);
    parts.uri = uri;
    let upstream_req = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
    match app.upstream.send(upstream_req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let class = match parts.status.as_u16() / 100 {
                2 => "2xx",
                3 => "3xx",
                4 => "4xx",
                _ => "5xx",
            };
            metrics::counter!(crate::metrics::PASSTHROUGH, "status" => class).increment(1);
            Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
        }
        Err(e) => {
            tracing::warn!(error = %e, "passthrough failed");
            super::upstream_error(&e)
        }
    }
}
