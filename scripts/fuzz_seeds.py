#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ from the test vectors.

  sse_parser  every stream of tests/vectors/sse.json, whole, one byte at a time and in uneven chunks
  config      proxy.toml, deploy/proxy.toml and every TOML snippet of src/config/tests.rs
  event_id    the Last-Event-ID cases of src/ids.rs's tests, and binary round-trip seeds
  batcher     the scenarios of src/reframe/batcher.rs's tests, in the fuzz input format

Run from anywhere: python3 scripts/fuzz_seeds.py. Seed files are named by their content hash and
replaced on every run; files with other names (inputs kept after a fuzzing find, such as
regression-*) are left alone.
"""

import hashlib
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, seeds):
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    # Seeds are named by their SHA-1; inputs with other names (regressions) are kept.
    for old in out.iterdir():
        if re.fullmatch(r"[0-9a-f]{40}", old.name):
            old.unlink()
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    print(f"{target}: {len(set(seeds))} seeds")


def sse_seeds():
    """Format (fuzz/src/sse.rs): limit byte, count of chunk lengths, the lengths, the stream."""
    seeds = []
    for v in json.loads((ROOT / "tests/vectors/sse.json").read_text()):
        body = bytes.fromhex(v["input_hex"]) if "input_hex" in v else v["input"].encode()
        seeds.append(bytes([0, 0]) + body)  # whole
        seeds.append(bytes([0, 1, 1]) + body)  # one byte at a time
        seeds.append(bytes([0, 3, 2, 0, 5]) + body)  # uneven, with empty chunks
        seeds.append(bytes([0x80 + 8, 1, 3]) + body)  # limit 16 bytes
    return seeds


RUST_STRING = re.compile(r'r#"(.*?)"#|"((?:[^"\\]|\\.)*)"', re.S)


def unescape(s):
    def repl(m):
        e = m.group(1)
        simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "0": "\0", "'": "'"}
        if e in simple:
            return simple[e]
        if e.startswith("u{"):
            return chr(int(e[2:-1], 16))
        if e == "\n":  # a line continuation
            return ""
        raise ValueError(f"unknown escape \\{e}")

    return re.sub(r"\\(u\{[0-9a-fA-F]+\}|.|\n)", repl, s, flags=re.S)


def config_seeds():
    seeds = [(ROOT / "proxy.toml").read_bytes(), (ROOT / "deploy/proxy.toml").read_bytes()]
    tests = (ROOT / "src/config/tests.rs").read_text()
    base = unescape(re.search(r'let base = "((?:[^"\\]|\\.)*)";', tests).group(1))
    for m in RUST_STRING.finditer(tests):
        text = m.group(1) if m.group(1) is not None else unescape(m.group(2))
        if "=" in text or text.startswith("["):
            seeds.append(text.replace("{base}", base).replace("{spec}", "llama3:8b").encode())
    return seeds


def event_id_seeds():
    sid = "I1VXJqotTFkkycKPq4BGrA"  # a stream id as the README shows it
    texts = [
        f"{sid}:0",
        f"{sid}:42",
        f"{sid}:18446744073709551615",
        "AAAAAAAAAAAAAAAAAAAAAA:1",
        "",
        "x",
        sid,
        f"{sid}:",
        f"{sid}:-1",
        f"{sid}:+1",
        f"{sid}:1a",
        f"{sid}x:1",
        f"{sid}:99999999999999999999",
        "AAAAAAAAAAAAAAAAAAAAAB:1",
        "a" * 100,
    ]
    seeds = [t.encode() for t in texts]
    seeds.append(b"\xff\xfe:1")
    seeds.append(bytes(range(24)))
    seeds.append(bytes([0xFF] * 24))
    return seeds


def batcher_seeds():
    """Format (fuzz/src/batcher.rs): max_delay/8ms, max_tokens-1, max_bytes-1, adaptive; then
    (gap, kind) pairs: gap in ms (x16 with the high bit), kind = token length or 0xFF."""
    # The unit tests' limits: 100 ms (here 96), 4 tokens, 16 bytes.
    fixed = bytes([12, 3, 15, 0])
    adaptive = bytes([12, 3, 15, 1])
    count_bytes_time = [(0, 1), (1, 1), (1, 1), (1, 1), (1, 1), (1, 10), (1, 10), (100, 1)]
    oversized = [(0, 1), (1, 40)]
    slow_then_burst = [(0, 1)] + [(0x80 | 19, 1)] * 5 + [(10, 1)] * 40
    with_events = [(0, 1), (1, 2), (1, 0xFF), (1, 3), (120, 0x41), (1, 0xFF)]
    pairs = lambda steps: bytes(b for step in steps for b in step)
    return [
        fixed + pairs(count_bytes_time),
        fixed + pairs(oversized),
        adaptive + pairs(slow_then_burst),
        fixed + pairs(slow_then_burst),
        fixed + pairs(with_events),
        bytes([0, 0, 255, 1]) + pairs(count_bytes_time),  # batching off
    ]


def main():
    write("sse_parser", sse_seeds())
    write("config", config_seeds())
    write("event_id", event_id_seeds())
    write("batcher", batcher_seeds())


if __name__ == "__main__":
    main()
