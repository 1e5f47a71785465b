//! Arbitrary bytes as a client's request head: the checks before routing
//! and the routing decision (hosts, path prefixes, every rule kind).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cutover::proxy::fuzzing::request_routing(data);
});
