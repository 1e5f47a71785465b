//! Arbitrary bytes, split at arbitrary points, as an upstream's response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cutover::proxy::fuzzing::upstream_response(data);
});
