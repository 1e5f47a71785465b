//! Crash durability: `benches/crash.py` kills cutover with SIGKILL at
//! random moments during 1,000 admin changes and checks, after every
//! restart, that the state is the last acknowledged change (or the one in
//! flight) and that the state file parses. Skipped without python3.

use std::process::Command;

#[test]
fn a_thousand_changes_survive_random_kills() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("python3 missing: skipped");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/crash.py");
    let out = Command::new("python3")
        .args([script, "--changes", "1000", "--seed", "7", "--binary"])
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("1000/1000 changes durable"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
