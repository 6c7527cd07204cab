//! The batcher's promises under any sequence of tokens, events and timers.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sse_proxy_fuzz::batcher::check(data);
});
