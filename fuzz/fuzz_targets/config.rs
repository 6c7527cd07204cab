//! The config loader on any text: no panic, every error at a real position.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sse_proxy_fuzz::config::check(data);
});
