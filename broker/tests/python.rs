//! Runs the Python client tests (broker/tests/python) against the `sluice`
//! binary this build produced: confluent-kafka and kafka-python, two client
//! implementations nobody here wrote. `.ci/run` installs them; where they
//! are missing this test fails and says how to install them.

use std::process::Command;

#[test]
fn python_clients_produce_consume_and_administer() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python");
    let probe = Command::new("python3")
        .args(["-c", "import confluent_kafka, kafka, pytest"])
        .status()
        .expect("python3 runs");
    assert!(
        probe.success(),
        "the Python client tests need: pip install confluent-kafka kafka-python pytest (.ci/run does this)"
    );
    let output = Command::new("python3")
        .args([
            "-m",
            "pytest",
            dir,
            "-q",
            "-p",
            "no:warnings",
            "-p",
            "no:cacheprovider",
        ])
        .env("SLUICE_BIN", env!("CARGO_BIN_EXE_sluice"))
        // Not the bench crate's librdkafka build, which `cargo test
        // --workspace` puts on LD_LIBRARY_PATH (see common::kcat).
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pytest failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "pytest ran no test:\n{stdout}");
}
