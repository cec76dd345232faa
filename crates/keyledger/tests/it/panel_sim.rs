//! `keyledger panel-sim` as an operator runs it: the binary serves a panel that answers a
//! login and an inbound list over HTTP, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// Kills the child if the test fails half-way, so no simulator outlives it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn panel_sim_serves_login_and_inbounds_and_stops_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args([
            "panel-sim",
            "--addr",
            "127.0.0.1:0",
            "--base-path",
            "/s3cret-path/",
            "--version",
            "v2.9",
            "--inbound-port",
            "8443",
            "--password-env",
            "PANEL_SIM_TEST_PASSWORD",
        ])
        .env("PANEL_SIM_TEST_PASSWORD", "demo-password-1")
        .env_remove("KEYLEDGER_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);

    // The simulator prints its URL once it listens.
    let stdout = running.0.stdout.take().unwrap();
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let until = Instant::now() + DEADLINE;
    let mut banner = Vec::new();
    let url = loop {
        let left = until.saturating_duration_since(Instant::now());
        let line = printed
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no URL printed; got {banner:?}"));
        banner.push(line.clone());
        if let Some(url) = line.strip_prefix("url: ") {
            break url::Url::parse(url).unwrap();
        }
    };
    assert!(url.path().ends_with("/s3cret-path/"), "{url}");
    let rest: Vec<String> = (0..2)
        .map(|_| printed.recv_timeout(DEADLINE).unwrap())
        .collect();
    assert_eq!(rest[0], "username: admin");
    assert_eq!(rest[1], "password: from $PANEL_SIM_TEST_PASSWORD");

    let http = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let login = |password: &'static str| {
        http.post(url.join("login").unwrap())
            .form(&[("username", "admin"), ("password", password)])
    };
    let wrong = json_of(login("nope")).await;
    assert_eq!(wrong["success"], false, "the panel's 200-but-failed login");
    let right = json_of(login("demo-password-1")).await;
    assert_eq!(right["success"], true, "{right}");
    let list = json_of(http.get(url.join("panel/api/inbounds/list").unwrap())).await;
    assert_eq!(list["success"], true, "{list}");
    let inbounds = list["obj"].as_array().unwrap();
    assert_eq!(inbounds.len(), 1);
    assert_eq!(inbounds[0]["id"], 1);
    assert_eq!(inbounds[0]["port"], 8443);
    assert_eq!(inbounds[0]["protocol"], "vless");

    let pid = running.0.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "still running after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}

async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}
