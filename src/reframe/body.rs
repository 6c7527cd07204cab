//! The upstream body as the reader reads it: any `Content-Encoding` undone, failures classified.
//!
//! The proxy asks for `identity`, but a backend (or a middleware in front of it) may compress
//! anyway. `gzip`, `deflate` (zlib, as HTTP defines it) and `br` are decoded as the bytes arrive,
//! one bounded buffer at a time; an unknown coding is refused, never parsed as event-stream bytes.

use crate::protocol::ErrorCode;
use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder};
use bytes::Bytes;
use futures_util::Stream;
use http::header::{HeaderMap, CONTENT_ENCODING};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

/// Most content codings applied on top of each other that are undone.
const MAX_CODINGS: usize = 2;
/// Decoded bytes handed to the parser at most per read; also each inner decoder's buffer.
const DECODED_CHUNK: usize = 16 * 1024;

/// Why the upstream body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection broke or the body was cut short.
    #[error("the backend connection broke: {0}")]
    Reset(String),
    /// The bytes cannot be decoded: an unknown or corrupt content coding.
    #[error("the backend answer cannot be decoded: {0}")]
    Malformed(String),
}

impl BodyError {
    /// The `error` event code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            BodyError::Reset(_) => ErrorCode::UpstreamReset,
            BodyError::Malformed(_) => ErrorCode::UpstreamMalformed,
        }
    }
}

/// A content coding the proxy can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Gzip,
    Deflate,
    Brotli,
}

/// The codings of a `Content-Encoding` in the order they were applied; `Err` names one the proxy
/// cannot undo.
fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, String> {
    let mut out = Vec::new();
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| "a Content-Encoding that is not text".to_string())?;
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let coding = match name.to_ascii_lowercase().as_str() {
                "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                _ => return Err(format!("unsupported Content-Encoding {name:?}")),
            };
            out.push(coding);
        }
    }
    if out.len() > MAX_CODINGS {
        return Err(format!("more than {MAX_CODINGS} content codings"));
    }
    Ok(out)
}

/// An inner body error carried through the decoders, so that it stays a reset.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Broken(String);

type Decoded = ReaderStream<Pin<Box<dyn AsyncBufRead + Send>>>;

enum Inner<B> {
    Plain(B),
    Decoded(Decoded),
    /// Fails once with this message, then ends.
    Refused(Option<String>),
}

/// The upstream body, decoded.
pub struct UpstreamBody<B> {
    inner: Inner<B>,
}

impl<B> UpstreamBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    /// Wraps `body`, undoing the codings its response `headers` name.
    pub fn new(body: B, headers: &HeaderMap) -> Self {
        let inner = match codings(headers) {
            Err(why) => Inner::Refused(Some(why)),
            Ok(c) if c.is_empty() => Inner::Plain(body),
            Ok(c) => Inner::Decoded(decoder(body, &c)),
        };
        UpstreamBody { inner }
    }
}

/// `body`'s bytes with `codings` undone, last applied first.
fn decoder<B>(body: B, codings: &[Coding]) -> Decoded
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let bytes = body
        .map_err(|e| std::io::Error::other(Broken(e.to_string())))
        .into_data_stream();
    let mut reader: Pin<Box<dyn AsyncBufRead + Send>> = Box::pin(StreamReader::new(bytes));
    for coding in codings.iter().rev() {
        let decoded: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => Box::pin(GzipDecoder::new(reader)),
            Coding::Deflate => Box::pin(ZlibDecoder::new(reader)),
            Coding::Brotli => Box::pin(BrotliDecoder::new(StandardWindow {
                inner: reader,
                checked: false,
            })),
        };
        reader = Box::pin(BufReader::with_capacity(DECODED_CHUNK, decoded));
    }
    ReaderStream::with_capacity(reader, DECODED_CHUNK)
}

/// The first 7 bits of a brotli stream that uses the large-window extension.
const LARGE_WINDOW_MARK: u8 = 0b001_0001;

/// Refuses brotli's large-window extension (windows up to 1 GiB, not part of HTTP's `br`), so
/// that a `br` answer holds at most the standard 16 MiB window.
struct StandardWindow<R> {
    inner: R,
    checked: bool,
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for StandardWindow<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        let checked = &mut this.checked;
        let buf = std::task::ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
        if let (false, Some(first)) = (*checked, buf.first()) {
            *checked = true;
            if first & 0x7f == LARGE_WINDOW_MARK {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "brotli large-window streams are not accepted",
                )));
            }
        }
        Poll::Ready(Ok(buf))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.inner).consume(amt);
    }
}

impl<R: AsyncBufRead + Unpin> AsyncRead for StandardWindow<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let data = std::task::ready!(Pin::new(&mut *this).poll_fill_buf(cx))?;
        let n = data.len().min(out.remaining());
        out.put_slice(&data[..n]);
        Pin::new(this).consume(n);
        Poll::Ready(Ok(()))
    }
}

/// A decoder's failure: the inner body's own (a reset), input cut short (a reset), or bytes that
/// do not decode (malformed).
fn classify(e: std::io::Error) -> BodyError {
    if let Some(broken) = e.get_ref().and_then(|inner| inner.downcast_ref::<Broken>()) {
        return BodyError::Reset(broken.0.clone());
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return BodyError::Reset("the compressed answer was cut short".into());
    }
    BodyError::Malformed(e.to_string())
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.inner {
            Inner::Plain(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Reset(e.to_string())))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Decoded(s) => {
                // A little input can decode into endless output with no I/O in between: each
                // decoded chunk spends the task's budget, as a socket read would, so the reader
                // yields to other tasks.
                let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                let next = std::task::ready!(Pin::new(s).poll_next(cx));
                coop.made_progress();
                Poll::Ready(match next {
                    Some(Ok(b)) => Some(Ok(Frame::data(b))),
                    Some(Err(e)) => Some(Err(classify(e))),
                    None => None,
                })
            }
            Inner::Refused(why) => Poll::Ready(why.take().map(|w| Err(BodyError::Malformed(w)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(b) => b.is_end_stream(),
            Inner::Decoded(_) => false,
            Inner::Refused(why) => why.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain(b) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::{Full, StreamBody};
    use tokio::io::AsyncWriteExt;

    fn headers(encoding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_str(encoding).expect("value"));
        h
    }

    async fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = async_compression::tokio::write::GzipEncoder::new(Vec::new());
        e.write_all(data).await.expect("compress");
        e.shutdown().await.expect("finish");
        e.into_inner()
    }

    async fn read_all<B>(mut body: UpstreamBody<B>) -> (Vec<u8>, Option<BodyError>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => out.extend_from_slice(&f.into_data().unwrap_or_default()),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn endless_decoded_output_yields_to_other_tasks() {
        let zeros = 8 << 20;
        let bomb = Full::new(Bytes::from(gzip(&vec![0u8; zeros]).await));
        let mut body = UpstreamBody::new(bomb, &headers("gzip"));
        let mut frames = 0;
        std::future::poll_fn(|cx| loop {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) => frames += 1,
                Poll::Pending => return Poll::Ready(()),
                other => panic!("decoded all {frames} frames without yielding: {other:?}"),
            }
        })
        .await;
        assert!(frames < zeros / DECODED_CHUNK, "{frames}");
    }

    #[test]
    fn codings_in_order_identity_skipped_unknown_refused() {
        assert_eq!(codings(&HeaderMap::new()), Ok(vec![]));
        assert_eq!(codings(&headers("identity")), Ok(vec![]));
        assert_eq!(codings(&headers("GZIP")), Ok(vec![Coding::Gzip]));
        assert_eq!(codings(&headers("x-gzip")), Ok(vec![Coding::Gzip]));
        assert_eq!(
            codings(&headers("deflate, br")),
            Ok(vec![Coding::Deflate, Coding::Brotli])
        );
        assert!(codings(&headers("zstd")).is_err());
        assert!(codings(&headers("gzip, gzip, gzip")).is_err());
    }

    #[tokio::test]
    async fn gzip_is_decoded() {
        let body = Full::new(Bytes::from(gzip(b"data: x\n\n").await));
        let (out, err) = read_all(UpstreamBody::new(body, &headers("gzip"))).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, b"data: x\n\n");
    }

    #[tokio::test]
    async fn brotli_is_decoded_but_not_its_large_window_extension() {
        let mut e = async_compression::tokio::write::BrotliEncoder::new(Vec::new());
        e.write_all(b"data: x\n\n").await.expect("compress");
        e.shutdown().await.expect("finish");
        let standard = Full::new(Bytes::from(e.into_inner()));
        let (out, err) = read_all(UpstreamBody::new(standard, &headers("br"))).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(out, b"data: x\n\n");
        // WBITS 0010001 then the 6-bit large window size: a 1 GiB window.
        let large = Full::new(Bytes::from_static(&[0x11, 0x0f, 0x00, 0x00]));
        let (out, err) = read_all(UpstreamBody::new(large, &headers("br"))).await;
        assert!(out.is_empty());
        let err = err.expect("refused");
        assert_eq!(err.code(), ErrorCode::UpstreamMalformed);
        assert!(err.to_string().contains("large-window"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_coding_fails_once_as_malformed() {
        let body = Full::new(Bytes::from_static(b"data: x\n\n"));
        let (out, err) = read_all(UpstreamBody::new(body, &headers("compress"))).await;
        assert!(out.is_empty());
        assert_eq!(err.expect("refused").code(), ErrorCode::UpstreamMalformed);
    }

    #[tokio::test]
    async fn corrupt_is_malformed_and_cut_short_or_broken_is_reset() {
        let (_, err) = read_all(UpstreamBody::new(
            Full::new(Bytes::from_static(b"\x1f\x8b\x08\x00garbage that is not deflate")),
            &headers("gzip"),
        ))
        .await;
        assert_eq!(err.expect("corrupt").code(), ErrorCode::UpstreamMalformed);

        let whole = gzip(&b"data: x\n\n".repeat(100)).await;
        let cut = Full::new(Bytes::copy_from_slice(&whole[..whole.len() / 2]));
        let (_, err) = read_all(UpstreamBody::new(cut, &headers("gzip"))).await;
        assert_eq!(err.expect("cut short").code(), ErrorCode::UpstreamReset);

        let chunks: Vec<Result<Frame<Bytes>, String>> = vec![
            Ok(Frame::data(Bytes::copy_from_slice(&whole[..10]))),
            Err("connection reset".into()),
        ];
        let broken = StreamBody::new(futures_util::stream::iter(chunks));
        let (_, err) = read_all(UpstreamBody::new(broken, &headers("gzip"))).await;
        let err = err.expect("broken");
        assert_eq!(err.code(), ErrorCode::UpstreamReset);
        assert!(err.to_string().contains("connection reset"), "{err}");
    }
}
