//! `keyledger bench e2e` as a program: a small run prints its figures and its baseline,
//! and the panel matches the log at the end.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_e2e_bench_prints_latencies_batching_and_its_baseline() {
    let output = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args([
            "bench",
            "e2e",
            "--users",
            "4",
            "--panel-latency-ms",
            "2",
            "--concurrency",
            "4",
        ])
        .env_clear()
        .env("DATABASE_URL", testkit::database_server_url())
        .env("AMQP_URL", testkit::broker_server_url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["commands"], 20);
    assert_eq!(report["final_drift"], 0);
    assert_eq!(report["accepted_to_panel_confirmed_ms"]["samples"], 20);
    assert_eq!(report["accepted_to_user_notified_ms"]["samples"], 20);
    assert!(
        report["baseline_panel_capacity_calls_per_s"]
            .as_f64()
            .expect("baseline")
            > 0.0
    );
    assert!(
        report["panel_calls_per_key_operation"]
            .as_f64()
            .expect("calls")
            >= 1.0
    );
    assert!(report["peak_memory_mib"].as_f64().expect("memory") > 0.0);
}
