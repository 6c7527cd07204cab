//! Differential check of `sse_proxy::sse::Parser` against [`crate::reference_sse`]: the same
//! events (type, data, id), the same `retry` and the same "something was discarded" answer at
//! the end, for any input cut into any chunks, and the event size limit enforced exactly where
//! the parser's documentation says.

use crate::reference_sse;
use bytes::Bytes;
use sse_proxy::sse::{Event, ParseError, Parser};

/// A limit no fuzz input reaches (an input byte decodes to at most 3 bytes).
pub const NO_LIMIT: usize = usize::MAX;

/// Prefix comparisons (each re-parses a prefix with the reference) stop after this many bytes,
/// so a long input cut into single bytes stays fast; the final comparison always runs.
const PREFIX_CHECK_BUDGET: usize = 1 << 16;

/// One test case: a stream, where to cut it, and the parser's `max_event_bytes`.
#[derive(Debug, Clone)]
pub struct Case<'a> {
    /// The stream's bytes.
    pub body: &'a [u8],
    /// Chunk lengths, used in turn until the body is used up (0 feeds an empty chunk).
    pub chunk_lens: Vec<usize>,
    /// `max_event_bytes` of the parser.
    pub limit: usize,
}

impl<'a> Case<'a> {
    /// Decodes a fuzz input: byte 0 picks the limit (below 0x80: none; else `(b - 0x80) * 2`),
    /// byte 1 mod 16 is the number of chunk-length bytes that follow, the rest is the stream.
    pub fn from_fuzz_input(data: &'a [u8]) -> Self {
        let limit = match data.first() {
            Some(&b) if b >= 0x80 => usize::from(b - 0x80) * 2,
            _ => NO_LIMIT,
        };
        let n = data.get(1).map_or(0, |&b| usize::from(b % 16));
        let lens_end = (2 + n).min(data.len());
        let chunk_lens = data
            .get(2..lens_end)
            .unwrap_or_default()
            .iter()
            .map(|&b| usize::from(b))
            .collect();
        Case {
            body: data.get(lens_end..).unwrap_or_default(),
            chunk_lens,
            limit,
        }
    }

    /// The chunks, in order; they concatenate to `body`.
    pub fn chunks(&self) -> Vec<&'a [u8]> {
        let mut rest = self.body;
        if self.chunk_lens.iter().all(|&n| n == 0) {
            return vec![rest];
        }
        let mut chunks = Vec::new();
        for &n in self.chunk_lens.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }
}

/// Runs `case` through both parsers and panics with a description at the first difference.
pub fn check(case: &Case<'_>) {
    let want = reference_sse::parse(case.body);
    let mut parser = Parser::new(case.limit);
    let mut got: Vec<reference_sse::Event> = Vec::new();
    let mut fed = 0;
    let mut budget = PREFIX_CHECK_BUDGET;
    for chunk in case.chunks() {
        let result = parser.feed(Bytes::copy_from_slice(chunk));
        fed += chunk.len();
        while let Some(ev) = parser.next_event() {
            got.push(convert(ev));
        }
        if let Err(err) = result {
            check_error(case, &want, &got, err.clone());
            assert_eq!(parser.feed(Bytes::from_static(b"\n\n")), Err(err), "poisoned");
            assert_eq!(parser.next_event(), None, "nothing after the error");
            return;
        }
        if budget >= fed {
            budget -= fed;
            // Every event completed by the bytes so far is out, none later than its blank line.
            let prefix = reference_sse::parse(&case.body[..fed]);
            assert_eq!(got, prefix.events, "events after {fed} bytes of {case:?}");
            assert_eq!(
                parser.retry(),
                prefix.retry,
                "retry after {fed} bytes of {case:?}"
            );
        }
    }
    assert_eq!(got, want.events, "events of {case:?}");
    check_sizes(case, &got);
    assert_eq!(parser.retry(), want.retry, "retry of {case:?}");
    assert_eq!(parser.finish(), want.discarded, "finish() of {case:?}");
    if std::str::from_utf8(case.body).is_ok() {
        assert!(
            want.peak_event_bytes <= case.limit,
            "no error although an event needed {} bytes over the limit: {case:?}",
            want.peak_event_bytes
        );
    }
}

/// The parser gave up: only for an event over the limit, and only after the events before it.
fn check_error(
    case: &Case<'_>,
    want: &reference_sse::Outcome,
    got: &[reference_sse::Event],
    err: ParseError,
) {
    assert_eq!(err, ParseError::EventTooLarge { limit: case.limit });
    check_sizes(case, got);
    assert!(
        want.peak_event_bytes > case.limit,
        "EventTooLarge although no event needs more than {} bytes: {case:?}",
        want.peak_event_bytes
    );
    assert!(
        got.len() <= want.events.len() && want.events[..got.len()] == *got,
        "events before the error differ: {got:?} vs {:?} of {case:?}",
        want.events
    );
}

/// A dispatched event's data (plus the LF of the spec's data buffer) fits the limit.
fn check_sizes(case: &Case<'_>, got: &[reference_sse::Event]) {
    for ev in got {
        assert!(
            ev.data.len() < case.limit,
            "event over the limit: {ev:?} of {case:?}"
        );
    }
}

fn convert(ev: Event) -> reference_sse::Event {
    reference_sse::Event {
        event: ev.event.as_str().to_string(),
        data: ev.data.as_str().to_string(),
        id: ev.id.map(|id| id.as_str().to_string()),
    }
}
