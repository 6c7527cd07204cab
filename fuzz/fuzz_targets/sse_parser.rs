//! The SSE parser against the reference parser, for any input and any chunking.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sse_proxy_fuzz::sse::check(&sse_proxy_fuzz::sse::Case::from_fuzz_input(data));
});
