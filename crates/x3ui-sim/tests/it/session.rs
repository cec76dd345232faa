//! Login and session quirks: 200-but-failed logins, re-login after expiry, CSRF, Bearer,
//! a wrong base path, and secrets kept out of Debug output.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{eventually, fast_policy, spec, start};
use x3ui_sim::{PanelSimulator, SimConfig};
use x3ui_worker::{BreakerState, Credentials, Panel, PanelApi, PanelError, Secret};

fn with_credentials(sim: &PanelSimulator, credentials: Credentials) -> Panel {
    let mut config = sim.panel_config("ams", 1);
    config.credentials = credentials;
    Panel::connect(config, fast_policy()).unwrap()
}

fn password(value: &str) -> Credentials {
    Credentials::Password {
        username: "admin".into(),
        password: Secret::new(value),
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_failure_although_the_panel_says_200() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let panel = with_credentials(&sim, password("wrong"));
    let error = panel.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::LoginRefused { ref msg, .. } if msg.contains("Invalid username")),
        "{error:?}"
    );
    // Never retried in a loop: one attempt per call.
    assert_eq!(sim.handle().stats().failed_logins, 1);
}

#[tokio::test]
async fn repeated_login_failures_open_the_breaker() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let panel = with_credentials(&sim, password("wrong"));
    for _ in 0..3 {
        assert!(matches!(
            panel.list_clients().await,
            Err(PanelError::LoginRefused { .. })
        ));
    }
    assert_eq!(panel.breaker_state(), BreakerState::Open);
    assert!(matches!(
        panel.list_clients().await,
        Err(PanelError::CircuitOpen { .. })
    ));
    assert_eq!(
        sim.handle().stats().failed_logins,
        3,
        "an open breaker sends nothing"
    );
}

#[tokio::test]
async fn the_panels_login_limiter_looks_like_a_wrong_password() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let wrong = with_credentials(&sim, password("wrong"));
    for _ in 0..5 {
        assert!(wrong.api().login().await.is_err());
    }
    let right = Panel::connect(sim.panel_config("ams", 1), fast_policy()).unwrap();
    let error = right.api().login().await.unwrap_err();
    assert!(
        matches!(error, PanelError::LoginRefused { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_expired_session_is_renewed_once_per_expiry() {
    for config in [
        SimConfig::v2_6(),
        SimConfig::v2_9(),
        SimConfig::v3_0(),
        SimConfig::v3_1(),
    ] {
        let flavour = (config.flavour, config.unauthenticated);
        let (sim, panel) = start(config).await;
        panel.list_clients().await.unwrap();
        assert_eq!(sim.handle().stats().logins, 1, "{flavour:?}");

        sim.handle().expire_sessions();
        panel.ensure_client(&spec("tg1-ams")).await.unwrap();
        assert_eq!(sim.handle().stats().logins, 2, "{flavour:?}");
        assert!(sim.handle().client("tg1-ams").is_some());
    }
}

#[tokio::test]
async fn sessions_that_die_after_a_max_age_are_renewed_transparently() {
    let (sim, panel) = start(SimConfig::v2_9()).await;
    sim.handle()
        .update_faults(|f| f.session_max_age = Some(Duration::from_millis(250)));
    eventually(
        "a second login after the session aged out",
        Duration::from_secs(5),
        || async {
            panel.list_clients().await.unwrap();
            (sim.handle().stats().logins >= 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn csrf_tokens_are_fetched_and_sent_on_v3_0() {
    let (sim, panel) = start(SimConfig::v3_0()).await;
    panel.ensure_client(&spec("tg1-ams")).await.unwrap();
    assert!(sim.handle().client("tg1-ams").is_some());

    // Without the header the panel answers 403, so the POST above did carry it.
    let raw = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let base = sim.base_url();
    raw.get(base.join("csrf-token").unwrap())
        .send()
        .await
        .unwrap();
    let status = raw
        .post(base.join("login").unwrap())
        .form(&[("username", "admin"), ("password", "sim-password")])
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_bearer_token_needs_no_login_and_a_wrong_one_is_rejected() {
    let sim = PanelSimulator::start(SimConfig::v3_0()).await.unwrap();
    let panel = with_credentials(&sim, Credentials::ApiToken(Secret::new("sim-api-token")));
    panel.ensure_client(&spec("tg1-ams")).await.unwrap();
    assert_eq!(sim.handle().stats().logins, 0);

    let wrong = with_credentials(&sim, Credentials::ApiToken(Secret::new("nope")));
    let error = wrong.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::SessionRejected { status: 404, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_wrong_base_path_is_reported_as_configuration_not_retried_as_a_session() {
    let sim = PanelSimulator::start(SimConfig::v2_9()).await.unwrap();
    let mut config = sim.panel_config("ams", 1);
    config.base_url = sim.base_url().join("../wrong-path/").unwrap();
    let panel = Panel::connect(config, fast_policy()).unwrap();
    let error = panel.list_clients().await.unwrap_err();
    assert!(
        matches!(error, PanelError::SessionRejected { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("base path"), "{error}");
    assert_eq!(sim.handle().stats().logins, 0);
}

#[tokio::test]
async fn secrets_never_show_in_debug_or_error_output() {
    let sim = PanelSimulator::start(SimConfig::v3_0()).await.unwrap();
    let secret_password = "hunter2-very-secret";
    let secret_token = "tok-very-secret-123";

    let by_password = with_credentials(&sim, password(secret_password));
    let error = by_password.list_clients().await.unwrap_err();
    let by_token = with_credentials(&sim, Credentials::ApiToken(Secret::new(secret_token)));
    let token_error = by_token.list_clients().await.unwrap_err();

    let mut config = sim.panel_config("ams", 1);
    config.credentials = password(secret_password);
    let outputs = [
        format!("{config:?}"),
        format!("{by_password:?}"),
        format!("{by_token:?}"),
        format!("{error:?} {error}"),
        format!("{token_error:?} {token_error}"),
    ];
    for output in outputs {
        assert!(
            !output.contains(secret_password),
            "password leaked: {output}"
        );
        assert!(!output.contains(secret_token), "token leaked: {output}");
    }
    assert!(format!("{config:?}").contains("redacted"));
}
