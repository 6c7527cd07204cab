use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::parse::{Event, ParseError, Parser, Text};
use super::write::{encode_comment, encode_event, encode_retry};

/// Shared with the JavaScript client (`tests/vectors/sse.json`).
const VECTORS: &str = include_str!("../../tests/vectors/sse.json");

const BIG: usize = 1 << 20;

#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Event>,
    error: Option<ParseError>,
    discarded: bool,
    retry: Option<u64>,
}

/// Feeds `input` cut at the (sorted) positions in `cuts`, each chunk a separate allocation.
fn run(input: &[u8], cuts: &[usize], limit: usize) -> Outcome {
    let mut parser = Parser::new(limit);
    let mut events = Vec::new();
    let mut error = None;
    let mut start = 0;
    for end in cuts.iter().copied().chain([input.len()]) {
        let chunk = Bytes::copy_from_slice(&input[start..end]);
        start = end;
        let result = parser.feed(chunk);
        while let Some(ev) = parser.next_event() {
            events.push(ev);
        }
        if let Err(e) = result {
            assert_eq!(
                parser.feed(Bytes::from_static(b"\n\n")),
                Err(e.clone()),
                "poisoned"
            );
            assert!(parser.next_event().is_none());
            error = Some(e);
            break;
        }
    }
    let discarded = parser.finish();
    Outcome {
        events,
        error,
        discarded,
        retry: parser.retry(),
    }
}

/// Runs `input` whole, at every 2-split, 1 byte at a time and (when short) at every 3-split,
/// asserting the same outcome each time; returns it.
fn run_all_splits(name: &str, input: &[u8], limit: usize) -> Outcome {
    let whole = run(input, &[], limit);
    let n = input.len();
    for i in 0..=n {
        assert_eq!(run(input, &[i], limit), whole, "{name}: split at {i}");
    }
    let bytewise: Vec<usize> = (1..n).collect();
    assert_eq!(run(input, &bytewise, limit), whole, "{name}: 1 byte at a time");
    if n <= 80 {
        for i in 0..=n {
            for j in i..=n {
                assert_eq!(run(input, &[i, j], limit), whole, "{name}: split at {i},{j}");
            }
        }
    }
    whole
}

fn hex_decode(s: &str) -> Vec<u8> {
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ASCII hex");
            u8::from_str_radix(pair, 16).expect("valid hex in vectors")
        })
        .collect()
}

fn ev(event: &str, data: &str, id: Option<&str>) -> Event {
    Event {
        event: Text::from(event.to_owned()),
        data: Text::from(data.to_owned()),
        id: id.map(|s| Text::from(s.to_owned())),
    }
}

fn parse_all(input: &[u8]) -> Vec<Event> {
    let out = run(input, &[], BIG);
    assert_eq!(out.error, None);
    out.events
}

// ---------------------------------------------------------------- shared vectors

#[test]
fn vectors_every_split() {
    let vectors: serde_json::Value = serde_json::from_str(VECTORS).expect("vectors are JSON");
    let vectors = vectors.as_array().expect("array of vectors");
    assert!(vectors.len() >= 80, "vector file looks truncated");
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let input = match v.get("input_hex") {
            Some(h) => hex_decode(h.as_str().expect("input_hex is a string")),
            None => v["input"].as_str().expect("input").as_bytes().to_vec(),
        };
        let expected: Vec<Event> = v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                ev(
                    e["type"].as_str().expect("type"),
                    e["data"].as_str().expect("data"),
                    e["id"].as_str(),
                )
            })
            .collect();
        let out = run_all_splits(name, &input, BIG);
        assert_eq!(out.error, None, "{name}");
        assert_eq!(out.events, expected, "{name}");
    }
}

// ---------------------------------------------------------------- parser specifics

#[test]
fn single_line_data_is_zero_copy() {
    let chunk = Bytes::from_static(b"event: token\r\ndata: {\"content\":\"tok\"}\r\n\r\n");
    let range = chunk.as_ptr() as usize..chunk.as_ptr() as usize + chunk.len();
    let mut p = Parser::new(BIG);
    p.feed(chunk.clone()).unwrap();
    let e = p.next_event().unwrap();
    assert_eq!(e.data, "{\"content\":\"tok\"}");
    assert_eq!(e.event, "token");
    assert!(range.contains(&(e.data.as_bytes().as_ptr() as usize)));
    assert!(range.contains(&(e.event.as_bytes().as_ptr() as usize)));
    assert_eq!(p.next_event(), None);
}

#[test]
fn events_are_drained_in_order_across_feeds() {
    let mut p = Parser::new(BIG);
    p.feed(Bytes::from_static(b"data: 1\n\ndata: 2\n\ndata: 3"))
        .unwrap();
    assert_eq!(p.next_event().unwrap().data, "1");
    p.feed(Bytes::from_static(b"\n\ndata: 4\n\n")).unwrap();
    let rest: Vec<_> = std::iter::from_fn(|| p.next_event()).map(|e| e.data).collect();
    assert_eq!(rest, ["2", "3", "4"]);
}

#[test]
fn retry_field() {
    let cases: &[(&str, Option<u64>)] = &[
        ("retry: 1000\n", Some(1000)),
        ("retry:0\n", Some(0)),
        ("retry: 10a\n", None),
        ("retry:\n", None),
        ("retry\n", None),
        ("retry: -1\n", None),
        ("retry:  5\n", None),
        ("retry: 5 \n", None),
        ("retry: 1.5\n", None),
        ("retry: \u{0661}\n", None),
        ("retry: 18446744073709551615\n", Some(u64::MAX)),
        ("retry: 18446744073709551616\n", None),
        ("retry: 1\nretry: 2\n", Some(2)),
        ("retry: 1\nretry: x\n", Some(1)),
        ("retry: 7", None),
        ("Retry: 7\n", None),
    ];
    for (input, want) in cases {
        let out = run_all_splits(input, input.as_bytes(), BIG);
        assert_eq!(out.retry, *want, "{input:?}");
        assert!(out.events.is_empty());
    }
}

#[test]
fn finish_reports_discarded_bytes() {
    let cases: &[(&[u8], bool)] = &[
        (b"", false),
        (b"data: a\n\n", false),
        (b"id: 1\n", false),
        (b"retry: 1\n", false),
        (b": done\n", false),
        (b"\n", false),
        (b"\xEF\xBB\xBF", false),
        (b"data: a\n", true),
        (b"data: a\n\ndata: b", true),
        (b"data", true),
        (b"event: x\n", true),
        (b": unterminated comment", true),
        (b"data: a\r", true),
        (b"\xEF\xBB", true),
        (b"\xEF", true),
    ];
    for (input, want) in cases {
        let out = run_all_splits(&format!("{input:?}"), input, BIG);
        assert_eq!(out.discarded, *want, "{:?}", String::from_utf8_lossy(input));
        assert!(out.events.len() <= 1);
    }
}

#[test]
fn finish_starts_a_new_stream() {
    let mut p = Parser::new(BIG);
    p.feed(Bytes::from_static(b"retry: 5\nid: 9\ndata: lost\r"))
        .unwrap();
    assert!(p.finish());
    // BOM is stripped again, the pending CR does not eat this LF, id and retry survive.
    p.feed(Bytes::from_static(b"\xEF\xBB\xBF\ndata: new\n\n"))
        .unwrap();
    assert_eq!(p.next_event(), Some(ev("message", "new", Some("9"))));
    assert_eq!(p.retry(), Some(5));
    assert!(!p.finish());
}

#[test]
fn endless_line_fails_once_over_limit() {
    let limit = 100;
    let mut p = Parser::new(limit);
    p.feed(Bytes::from_static(b"data: ")).unwrap();
    let mut fed = 6;
    let err = loop {
        match p.feed(Bytes::from_static(b"xxxxxxx")) {
            Ok(()) => {
                fed += 7;
                assert!(fed <= limit, "accepted {fed} bytes");
                assert!(p.buffered_len() <= limit);
            }
            Err(e) => break e,
        }
    };
    assert_eq!(fed + 7, 104, "failed at the first chunk crossing the limit");
    assert_eq!(err, ParseError::EventTooLarge { limit });
    assert_eq!(err.to_string(), "upstream event larger than 100 bytes");
    assert_eq!(p.feed(Bytes::from_static(b"\n\n")), Err(err.clone()));
    assert_eq!(p.buffered_len(), 0, "buffers are freed on poisoning");
    assert_eq!(p.next_event(), None);
}

#[test]
fn endless_line_in_one_chunk_fails() {
    let mut p = Parser::new(10);
    let err = p.feed(Bytes::from(vec![b'a'; 1000]));
    assert_eq!(err, Err(ParseError::EventTooLarge { limit: 10 }));
}

#[test]
fn endless_comment_is_discarded_without_buffering() {
    let mut p = Parser::new(16);
    p.feed(Bytes::from_static(b": ")).unwrap();
    for _ in 0..1000 {
        p.feed(Bytes::from(vec![b'c'; 1024])).unwrap();
        assert_eq!(p.buffered_len(), 0);
    }
    p.feed(Bytes::from_static(b"\r")).unwrap();
    p.feed(Bytes::from_static(b"\ndata: after\n\n")).unwrap();
    assert_eq!(p.next_event(), Some(ev("message", "after", None)));
    // A comment inside one chunk is never counted either.
    let long = format!(":{}\ndata: x\n\n", "c".repeat(100));
    let out = run_all_splits("long comment", long.as_bytes(), 16);
    assert_eq!(out.error, None);
    assert_eq!(out.events, [ev("message", "x", None)]);
}

#[test]
fn limit_boundary_is_split_independent() {
    let limit = 20;
    // A line costs its length; `data: ` + N bytes is a 6 + N byte line.
    let ok = format!("data: {}\n\n", "x".repeat(limit - 6));
    let out = run_all_splits("exact", ok.as_bytes(), limit);
    assert_eq!(out.error, None);
    assert_eq!(out.events.len(), 1);

    let too_big = format!("data: {}\n\n", "x".repeat(limit - 5));
    let out = run_all_splits("one over", too_big.as_bytes(), limit);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit }));
    assert!(out.events.is_empty());

    let unterminated = format!("data: {}", "x".repeat(limit - 5));
    let out = run_all_splits("one over, unterminated", unterminated.as_bytes(), limit);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit }));
}

#[test]
fn limit_counts_the_whole_event() {
    let limit = 32;
    // Data buffer: "aaaaaaaa\n" * 3 = 27; the fourth line pushes past 32.
    let input = b"data: first\n\ndata:aaaaaaaa\ndata:aaaaaaaa\ndata:aaaaaaaa\ndata:aaaaaaaa\n\n";
    let out = run_all_splits("accumulated", input, limit);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit }));
    assert_eq!(
        out.events,
        [ev("message", "first", None)],
        "earlier events survive"
    );

    // The event type counts too, until the dispatch resets it.
    let input = b"event: 01234567890123456789\ndata: 0123456789\n\n";
    let out = run_all_splits("event + data", input, limit);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit }));
    let input = b"event: 01234567890123456789\n\ndata: 0123456789\n\n";
    let out = run_all_splits("event reset", input, limit);
    assert_eq!(out.error, None);

    // Blank lines, comments and ids of earlier events do not accumulate.
    let many = "id: 1\ndata: 0123456789\n\n: c\n\n".repeat(50);
    let out = run_all_splits("many small", many.as_bytes(), limit);
    assert_eq!(out.error, None);
    assert_eq!(out.events.len(), 50);
}

#[test]
fn limit_counts_repaired_utf8() {
    // 20 raw bytes fit, but each invalid byte becomes a 3-byte U+FFFD.
    let mut input = b"data:".to_vec();
    input.extend([0xFF; 20]);
    input.extend(b"\n\n");
    let out = run_all_splits("repaired", &input, 40);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit: 40 }));
    let out = run_all_splits("repaired fits", &input, 61);
    assert_eq!(out.events, [ev("message", &"\u{FFFD}".repeat(20), None)]);
}

#[test]
fn zero_limit_accepts_only_blank_and_comment_lines() {
    let out = run_all_splits("zero ok", b"\n\r\n: c\n\n", 0);
    assert_eq!(out.error, None);
    let out = run_all_splits("zero data", b"data\n\n", 0);
    assert_eq!(out.error, Some(ParseError::EventTooLarge { limit: 0 }));
}

#[test]
fn text_api() {
    let t = Text::from_static("héllo");
    assert_eq!(t.as_str(), "héllo");
    assert_eq!(t, "héllo");
    assert_eq!("héllo", t);
    assert_eq!(t.len(), 6);
    assert!(!t.is_empty());
    assert!(Text::default().is_empty());
    assert_eq!(t.to_string(), "héllo");
    assert_eq!(format!("{t:?}"), "\"héllo\"");
    assert_eq!(t.as_bytes(), &Bytes::from_static("héllo".as_bytes()));
    assert_eq!(t.clone().into_bytes(), Bytes::from_static("héllo".as_bytes()));
    assert_eq!(Text::try_from(Bytes::from_static(b"ok")).unwrap(), "ok");
    assert!(Text::try_from(Bytes::from_static(b"\xFF")).is_err());
    assert_eq!(Text::from_utf8_lossy(Bytes::from_static(b"a\xFFb")), "a\u{FFFD}b");
    let src = Bytes::from_static(b"valid");
    assert_eq!(
        Text::from_utf8_lossy(src.clone()).as_bytes().as_ptr(),
        src.as_ptr()
    );
}

#[test]
fn invalid_utf8_never_panics() {
    let mut rng = StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15);
    for _ in 0..300 {
        let len = rng.gen_range(0..40);
        let input: Vec<u8> = (0..len)
            .map(|_| match rng.gen_range(0..4) {
                0 => b"\n\r:d"[rng.gen_range(0..4)],
                1 => b"data"[rng.gen_range(0..4)],
                _ => rng.gen::<u8>(),
            })
            .collect();
        let whole = run(&input, &[], BIG);
        for _ in 0..8 {
            let mut cuts = [
                rng.gen_range(0..=len),
                rng.gen_range(0..=len),
                rng.gen_range(0..=len),
            ];
            cuts.sort_unstable();
            assert_eq!(run(&input, &cuts, BIG), whole, "{input:?} at {cuts:?}");
        }
    }
}

// ---------------------------------------------------------------- writer

fn encoded(id: Option<&str>, event: Option<&str>, data: &str) -> String {
    let mut buf = BytesMut::new();
    encode_event(&mut buf, id, event, data);
    String::from_utf8(buf.to_vec()).unwrap()
}

#[test]
fn encode_event_frames() {
    assert_eq!(encoded(None, None, "hi"), "data: hi\n\n");
    assert_eq!(
        encoded(Some("s:1"), Some("progress"), "{}"),
        "event: progress\ndata: {}\nid: s:1\n\n"
    );
    assert_eq!(encoded(None, Some("message"), "x"), "data: x\n\n");
    assert_eq!(encoded(None, Some(""), "x"), "data: x\n\n");
    assert_eq!(encoded(None, Some("\r\n"), "x"), "data: x\n\n");
    assert_eq!(encoded(Some(""), None, "x"), "data: x\nid: \n\n");
    assert_eq!(encoded(None, None, ""), "data: \n\n");
    assert_eq!(encoded(None, None, "\n"), "data: \ndata: \n\n");
    assert_eq!(encoded(None, None, "a\r"), "data: a\ndata: \n\n");
    assert_eq!(
        encoded(None, None, "a\nb\r\nc\rd\n\re"),
        "data: a\ndata: b\ndata: c\ndata: d\ndata: \ndata: e\n\n"
    );
    assert_eq!(encoded(None, None, " lead: x"), "data:  lead: x\n\n");
    assert_eq!(encoded(None, Some("x\r\ny\rz\n"), "d"), "event: xyz\ndata: d\n\n");
    assert_eq!(encoded(Some("a\nb\0c\r"), None, "d"), "data: d\nid: abc\n\n");
}

#[test]
fn encode_appends() {
    let mut buf = BytesMut::new();
    encode_retry(&mut buf, 1);
    encode_comment(&mut buf, "hb");
    encode_event(&mut buf, Some("i"), None, "a");
    encode_comment(&mut buf, "hb");
    assert_eq!(&buf[..], b"retry: 1\n: hb\ndata: a\nid: i\n\n: hb\n");
    // One event, which carries the retry; the comments dispatch nothing.
    let out = run(&buf, &[], BIG);
    assert_eq!(out.retry, Some(1));
    assert_eq!(out.events.len(), 1);
}

#[test]
fn encode_comment_frames() {
    let enc = |t: &str| {
        let mut buf = BytesMut::new();
        encode_comment(&mut buf, t);
        buf.freeze()
    };
    assert_eq!(enc("heartbeat"), &b": heartbeat\n"[..]);
    assert_eq!(enc("heart\r\nbeat\n\r"), &b": heartbeat\n"[..]);
    assert_eq!(enc(""), &b": \n"[..]);
    let out = run(&enc("data: x\n\ndata: y"), &[], BIG);
    assert!(out.events.is_empty());
    assert!(!out.discarded);
}

#[test]
fn encode_retry_frames() {
    for ms in [0, 7, 10, 1000, 123_456_789, u64::MAX] {
        let mut buf = BytesMut::new();
        encode_retry(&mut buf, ms);
        assert_eq!(buf, format!("retry: {ms}\n").as_bytes());
        let out = run(&buf, &[], BIG);
        assert_eq!(out.retry, Some(ms));
        assert!(out.events.is_empty());
    }
}

/// Up to `max_pieces` pieces chosen to stress the parser and encoder.
fn random_string(rng: &mut StdRng, max_pieces: usize) -> String {
    const PIECES: &[&str] = &[
        "a",
        "b",
        "z",
        " ",
        "  ",
        ":",
        ": ",
        "\n",
        "\r",
        "\r\n",
        "\n\r",
        "é",
        "€",
        "😀",
        "\u{FEFF}",
        "\0",
        "data: ",
        "event:",
        "id",
        "retry: 1",
        "{\"content\":\"tok\"}",
    ];
    (0..rng.gen_range(0..=max_pieces))
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

/// What a client reads back: CRLF and CR in data become LF.
fn normalize_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

fn strip(s: &str, nul: bool) -> String {
    s.chars()
        .filter(|&c| c != '\r' && c != '\n' && !(nul && c == '\0'))
        .collect()
}

#[test]
fn round_trip_random() {
    let mut rng = StdRng::seed_from_u64(0x2545_F491_4F6C_DD1D);
    for round in 0..400 {
        let mut wire = BytesMut::new();
        encode_retry(&mut wire, 1000);
        let mut expected = Vec::new();
        let mut last_id: Option<String> = None;
        for _ in 0..rng.gen_range(0..6) {
            let data = random_string(&mut rng, 12);
            let id = match rng.gen_range(0..3) {
                0 => None,
                _ => Some(random_string(&mut rng, 3)),
            };
            let event = match rng.gen_range(0..4) {
                0 => None,
                1 => Some("message".to_owned()),
                _ => Some(random_string(&mut rng, 3)),
            };
            encode_event(&mut wire, id.as_deref(), event.as_deref(), &data);
            if rng.gen_range(0..3) == 0 {
                encode_comment(&mut wire, &random_string(&mut rng, 4));
            }
            if let Some(id) = &id {
                last_id = Some(strip(id, true)).filter(|s| !s.is_empty());
            }
            let event = event
                .map(|e| strip(&e, false))
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".to_owned());
            expected.push(ev(&event, &normalize_newlines(&data), last_id.as_deref()));
        }
        assert!(!wire.contains(&b'\r'), "no CR on the wire");
        let len = wire.len();
        let mut cuts = [
            rng.gen_range(0..=len),
            rng.gen_range(0..=len),
            rng.gen_range(0..=len),
        ];
        cuts.sort_unstable();
        let out = run(&wire, &cuts, BIG);
        assert_eq!(
            out.events,
            expected,
            "round {round}: {:?}",
            String::from_utf8_lossy(&wire)
        );
        assert_eq!(out.error, None);
        assert!(!out.discarded);
        assert_eq!(out.retry, Some(1000));
    }
}

#[test]
fn round_trip_edge_data() {
    for data in [
        "", " ", "  x", ":", "::", "\n", "\r", "\r\n", "\n\n", "a\r\rb", "😀\r\n", "\0", "\u{FEFF}",
    ] {
        let mut wire = BytesMut::new();
        encode_event(&mut wire, None, None, data);
        assert_eq!(
            parse_all(&wire),
            [ev("message", &normalize_newlines(data), None)],
            "{data:?}"
        );
    }
}

/// Throughput check: `cargo test --release -- --ignored --nocapture throughput`.
#[test]
#[ignore]
fn throughput() {
    let mut wire = BytesMut::new();
    for i in 0..200_000 {
        encode_event(&mut wire, None, None, &format!("{{\"content\":\"tok{i}\"}}"));
    }
    let wire = wire.freeze();
    let started = std::time::Instant::now();
    let mut p = Parser::new(BIG);
    let mut n = 0;
    for chunk in wire.chunks(4096) {
        p.feed(wire.slice_ref(chunk)).unwrap();
        while let Some(e) = p.next_event() {
            n += e.data.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(n > 0);
    eprintln!(
        "{:.0} MB/s, {:.0} events/s",
        wire.len() as f64 / secs / 1e6,
        200_000.0 / secs
    );
}
