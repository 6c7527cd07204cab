//! The fuzz targets' checks (`fuzz/src/`) on stable, without libFuzzer: the SSE parser against
//! the reference parser over every shared vector and thousands of seeded random streams, and
//! every target's check over its committed corpus (seeds and any regression inputs).

#[path = "../fuzz/src/batcher.rs"]
mod batcher;
#[path = "../fuzz/src/config.rs"]
mod config;
#[path = "../fuzz/src/event_id.rs"]
mod event_id;
#[path = "../fuzz/src/reference_sse.rs"]
mod reference_sse;
#[path = "../fuzz/src/sse.rs"]
mod sse;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sse::{Case, NO_LIMIT};
use std::path::Path;

const VECTORS: &str = include_str!("vectors/sse.json");

/// (name, input bytes, expected events) of every shared vector.
fn vectors() -> Vec<(String, Vec<u8>, Vec<reference_sse::Event>)> {
    let all: serde_json::Value = serde_json::from_str(VECTORS).expect("vectors are JSON");
    let all = all.as_array().expect("an array of vectors");
    assert!(all.len() >= 80, "vector file looks truncated");
    all.iter()
        .map(|v| {
            let name = v["name"].as_str().expect("name").to_string();
            let input = match v["input_hex"].as_str() {
                Some(hex) => (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect(),
                None => v["input"].as_str().expect("input").as_bytes().to_vec(),
            };
            let events = v["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| reference_sse::Event {
                    event: e["type"].as_str().expect("type").to_string(),
                    data: e["data"].as_str().expect("data").to_string(),
                    id: e["id"].as_str().map(str::to_string),
                })
                .collect();
            (name, input, events)
        })
        .collect()
}

fn check(body: &[u8], chunk_lens: Vec<usize>, limit: usize) {
    sse::check(&Case {
        body,
        chunk_lens,
        limit,
    });
}

#[test]
fn reference_parser_passes_every_vector() {
    for (name, input, events) in vectors() {
        assert_eq!(reference_sse::parse(&input).events, events, "{name}");
    }
}

#[test]
fn parser_matches_reference_on_every_vector() {
    for (_, input, _) in vectors() {
        let n = input.len();
        check(&input, vec![], NO_LIMIT);
        check(&input, vec![1], NO_LIMIT);
        check(&input, vec![0, 2, 3], NO_LIMIT);
        for cut in 1..n {
            check(&input, vec![cut, n], NO_LIMIT);
        }
        for limit in [0, 1, 5, 8, 13, 21, 64] {
            check(&input, vec![], limit);
            check(&input, vec![1], limit);
        }
    }
}

/// Pieces a random stream is made of: field names, separators, every kind of line end, the BOM
/// and parts of it, invalid UTF-8, NUL and multi-byte characters.
const PIECES: &[&[u8]] = &[
    b"data",
    b"event",
    b"id",
    b"retry",
    b"dat",
    b"Data",
    b":",
    b": ",
    b" ",
    b"  ",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\xEF\xBB\xBF",
    b"\xEF\xBB",
    b"\xEF",
    b"\xFF",
    b"\xC3",
    b"\xE2\x82",
    b"\0",
    b"0",
    b"42",
    b"18446744073709551616",
    b"x",
    b"hello",
    "é".as_bytes(),
    "€".as_bytes(),
    "𝄞".as_bytes(),
    b"message",
    b"{\"content\":\"tok\"}",
];

fn pick<'a>(rng: &mut StdRng, from: &[&'a [u8]]) -> &'a [u8] {
    from[rng.gen_range(0..from.len())]
}

/// Mostly lines of the shape field, separator, value, line end; sometimes any piece at all.
fn random_stream(rng: &mut StdRng) -> Vec<u8> {
    const FIELDS: &[&[u8]] = &[b"data", b"event", b"id", b"retry", b"", b"x"];
    const SEPARATORS: &[&[u8]] = &[b":", b": ", b":  ", b""];
    const ENDS: &[&[u8]] = &[b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r", b""];
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(0..30) {
        if rng.gen_bool(0.3) {
            out.extend_from_slice(pick(rng, PIECES));
            continue;
        }
        out.extend_from_slice(pick(rng, FIELDS));
        out.extend_from_slice(pick(rng, SEPARATORS));
        for _ in 0..rng.gen_range(0..3) {
            out.extend_from_slice(pick(rng, PIECES));
        }
        out.extend_from_slice(pick(rng, ENDS));
    }
    out
}

#[test]
fn parser_matches_reference_on_random_streams() {
    let mut rng = StdRng::seed_from_u64(0x55e_9a25e);
    for _ in 0..5000 {
        let body = random_stream(&mut rng);
        let chunk_lens = (0..rng.gen_range(0..6)).map(|_| rng.gen_range(0..12)).collect();
        let limit = if rng.gen_bool(0.7) {
            NO_LIMIT
        } else {
            rng.gen_range(0..80)
        };
        check(&body, chunk_lens, limit);
    }
}

#[test]
fn fuzz_input_decoding() {
    let case = Case::from_fuzz_input(b"\x85\x02\x03\x00data: x\n\n");
    assert_eq!(case.limit, 10);
    assert_eq!(case.chunk_lens, vec![3, 0]);
    assert_eq!(case.body, b"data: x\n\n");
    let chunks: Vec<&[u8]> = vec![b"dat", b"", b"a: ", b"", b"x\n\n"];
    assert_eq!(case.chunks(), chunks);
    let case = Case::from_fuzz_input(b"");
    assert_eq!((case.limit, case.body), (NO_LIMIT, &b""[..]));
    assert_eq!(Case::from_fuzz_input(b"\x00\x0f\x01").chunk_lens, vec![1]);
}

/// Runs `check` on every file of `fuzz/corpus/<target>/`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    n
}

#[test]
fn committed_corpora_pass() {
    fn sse_check(data: &[u8]) {
        sse::check(&Case::from_fuzz_input(data));
    }
    assert!(replay("sse_parser", sse_check) >= 80);
    assert!(replay("config", config::check) >= 10);
    assert!(replay("event_id", event_id::check) >= 10);
    assert!(replay("batcher", batcher::check) >= 3);
}
