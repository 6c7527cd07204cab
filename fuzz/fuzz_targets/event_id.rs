//! `Last-Event-ID` parsing: no panic, valid ids round-trip.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sse_proxy_fuzz::event_id::check(data);
});
