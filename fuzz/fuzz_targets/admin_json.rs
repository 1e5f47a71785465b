//! Arbitrary bytes as the admin API's JSON bodies: a list of rules (read
//! and compiled as `PUT /v1/apps/{app}/rules` does), and any JSON value.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(rules) = serde_json::from_slice::<Vec<cutover::model::RuleSpec>>(data) {
        let _ = cutover::config::compile_rules("apps.shop", &rules);
    }
    let _ = serde_json::from_slice::<serde_json::Value>(data);
});
