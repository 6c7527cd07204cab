//! Requests through a real HTTP client (hyper-util's): HTTP/1.1, or HTTP/2 with prior knowledge
//! (h2c). Every wait is bounded by `WAIT`.

use super::WAIT;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::TokioExecutor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn builder() -> Builder {
    Client::builder(TokioExecutor::new())
}

/// A plain HTTP/1.1 client.
pub fn client<B>() -> Client<HttpConnector, B>
where
    B: Body + Send,
    B::Data: Send,
{
    builder().build_http()
}

/// An HTTP/2 client that speaks h2c with prior knowledge.
pub fn h2c_client<B>() -> Client<HttpConnector, B>
where
    B: Body + Send,
    B::Data: Send,
{
    builder().http2_only(true).build_http()
}

/// Sends `req` on `client` and returns the response (headers only; body still streaming).
pub async fn send_on<B>(client: &Client<HttpConnector, B>, req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("response in time")
        .expect("response")
}

/// Sends a prebuilt request over HTTP/1.1 (for header values that are not valid UTF-8, say, or a
/// streaming body).
pub async fn send_request<B>(req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    send_on(&client(), req).await
}

/// Sends a request with a binary body and returns the response (headers only; body still streaming).
pub async fn send_bytes(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Response<Incoming> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_request(b.body(Full::new(body)).expect("request")).await
}

/// Sends a request and returns the response (headers only; body still streaming).
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Response<Incoming> {
    send_bytes(method, url, headers, Bytes::from(body.to_string())).await
}

/// GET with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Response<Incoming> {
    send("GET", url, headers, "").await
}

/// Reads a whole body as bytes.
pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes()
}
