//! Arbitrary text as a state file: refused with a reason, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cutover::control::state::StateFile::parse(text);
    }
});
