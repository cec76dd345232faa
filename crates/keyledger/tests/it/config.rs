//! Configuration per docs/configuration.md: file plus environment, precise errors, no leaked secrets.

use std::collections::HashMap;

use service::config::Config;
use x3ui_worker::{ApiKind, Credentials};

const PASSWORD: &str = "correct-horse-battery-staple";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";

const FILE: &str = r#"
database_url = "postgres://keyledger@db:5432/keyledger"

[[locations]]
id = "ams"
name = "Amsterdam 🇳🇱"
panel_url = "https://panel.example.com:2053/secretpath"
username = "admin"
password_env = "X3UI_AMS_PASSWORD"
inbound_id = 1
public_host = "ams.example.com"

[[locations]]
id = "fra"
name = "Frankfurt"
panel_url = "https://fra.example.com/base/"
api_token_env = "X3UI_FRA_TOKEN"
inbound_id = 3
public_host = "2001:db8::1"
accept_invalid_certs = true
api = "clients"
"#;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn full_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("X3UI_AMS_PASSWORD", PASSWORD),
        ("X3UI_FRA_TOKEN", "fra-api-token-value"),
        ("KEYLEDGER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TELEGRAM_BOT_TOKEN", "123456:telegram-secret"),
    ]
}

fn error_field(file: Option<&str>, pairs: &[(&str, &str)]) -> String {
    Config::from_sources(file, env(pairs))
        .expect_err("configuration refused")
        .field
}

#[test]
fn defaults_apply_without_file_or_environment() {
    let config = Config::from_sources(None, env(&[])).expect("defaults");
    assert_eq!(
        config.database_url.as_str(),
        "postgres://postgres@127.0.0.1:5432/keyledger"
    );
    assert_eq!(
        config.amqp_url.as_str(),
        "amqp://guest:guest@127.0.0.1:5672/%2f"
    );
    assert_eq!(config.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(
        config.telegram_api_url.as_str(),
        "https://api.telegram.org/"
    );
    assert_eq!(config.log_filter, "info");
    assert!(config.admin_token.is_none() && config.telegram_bot_token.is_none());
    assert!(config.locations.is_empty());
}

#[test]
fn the_file_is_read_and_the_environment_takes_precedence() {
    let mut pairs = full_env();
    pairs.push(("DATABASE_URL", "postgres://postgres@10.1.1.1/other"));
    pairs.push(("KEYLEDGER_HTTP_ADDR", "0.0.0.0:9000"));
    let config = Config::from_sources(Some(FILE), env(&pairs)).expect("valid");
    assert_eq!(
        config.database_url.as_str(),
        "postgres://postgres@10.1.1.1/other"
    );
    assert_eq!(config.http_addr.port(), 9000);
    let ams = &config.locations[0];
    assert_eq!(
        ams.panel_url.as_str(),
        "https://panel.example.com:2053/secretpath/"
    );
    assert_eq!(ams.api, ApiKind::Legacy);
    assert!(matches!(
        &ams.credentials,
        Credentials::Password { username, password } if username == "admin" && password.expose() == PASSWORD
    ));
    let fra = &config.locations[1];
    assert_eq!(fra.api, ApiKind::Clients);
    assert!(fra.accept_invalid_certs);
    assert!(matches!(fra.credentials, Credentials::ApiToken(_)));
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let config = Config::from_sources(Some(FILE), env(&full_env())).expect("valid");
    let shown = format!("{config:?} {config:#?} {}", config.database_url);
    for secret in [
        PASSWORD,
        ADMIN_TOKEN,
        "fra-api-token-value",
        "telegram-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} leaked into {shown}");
    }
    assert!(shown.contains("Amsterdam"), "the rest is still shown");
}

#[test]
fn a_missing_password_variable_names_the_field() {
    let pairs = [("X3UI_FRA_TOKEN", "fra-api-token-value")];
    let err = Config::from_sources(Some(FILE), env(&pairs)).expect_err("refused");
    assert_eq!(err.field, "locations[0].password_env");
    assert!(err.to_string().contains("X3UI_AMS_PASSWORD"));
    assert!(!err.to_string().contains(PASSWORD));
}

#[test]
fn unknown_keys_and_bad_values_name_their_field() {
    assert_eq!(error_field(Some("databse_url = \"x\""), &[]), "databse_url");
    let bad_location = |line: &str| {
        format!(
            "[[locations]]\nid = \"ams\"\nname = \"A\"\npanel_url = \"https://p/\"\nusername = \"u\"\n\
             password_env = \"P\"\ninbound_id = 1\npublic_host = \"h.example\"\n{line}\n"
        )
    };
    assert_eq!(
        error_field(Some(&bad_location("colour = 1")), &[("P", "x")]),
        "colour"
    );
    let file = FILE.replace("id = \"fra\"", "id = \"ams\"");
    assert_eq!(error_field(Some(&file), &full_env()), "locations[1].id");
    let file = FILE.replace("id = \"ams\"", "id = \"Bad Id\"");
    assert_eq!(error_field(Some(&file), &full_env()), "locations[0].id");
    let file = FILE.replace("https://panel.example.com:2053/secretpath", "ftp://panel");
    assert_eq!(
        error_field(Some(&file), &full_env()),
        "locations[0].panel_url"
    );
    let file = FILE.replace("inbound_id = 1", "inbound_id = 0");
    assert_eq!(
        error_field(Some(&file), &full_env()),
        "locations[0].inbound_id"
    );
    let file = FILE.replace("\"ams.example.com\"", "\"ams.example.com/evil\"");
    assert_eq!(
        error_field(Some(&file), &full_env()),
        "locations[0].public_host"
    );
    // An IPv6 address with one bracket only would give links nobody can read.
    for host in ["[2001:db8::1", "2001:db8::1]", "[[2001:db8::1]]"] {
        let file = FILE.replace("\"2001:db8::1\"", &format!("\"{host}\""));
        assert_eq!(
            error_field(Some(&file), &full_env()),
            "locations[1].public_host",
            "{host}"
        );
    }
    let file = FILE.replace("username = \"admin\"\n", "");
    assert_eq!(
        error_field(Some(&file), &full_env()),
        "locations[0].username"
    );
}

#[test]
fn bad_environment_values_name_their_variable() {
    assert_eq!(
        error_field(None, &[("DATABASE_URL", "mysql://x/y")]),
        "DATABASE_URL"
    );
    assert_eq!(error_field(None, &[("AMQP_URL", "not a url")]), "AMQP_URL");
    assert_eq!(
        error_field(None, &[("KEYLEDGER_HTTP_ADDR", "localhost")]),
        "KEYLEDGER_HTTP_ADDR"
    );
    assert_eq!(
        error_field(None, &[("KEYLEDGER_LOG_FORMAT", "xml")]),
        "KEYLEDGER_LOG_FORMAT"
    );
    assert_eq!(
        error_field(None, &[("TELEGRAM_API_URL", "file:///etc")]),
        "TELEGRAM_API_URL"
    );
    assert_eq!(
        error_field(None, &[("KEYLEDGER_AUDITOR_TOKEN", "short")]),
        "KEYLEDGER_AUDITOR_TOKEN"
    );
}

#[test]
fn the_management_api_url_is_its_own_setting_when_given() {
    let derived = Config::from_sources(None, env(&[])).expect("defaults");
    assert!(derived.management_url.is_none());
    const TLS_BROKER: (&str, &str) = ("AMQP_URL", "amqps://svc:amqp-pw@rabbit:5671/keyledger");
    let config = Config::from_sources(
        None,
        env(&[
            TLS_BROKER,
            (
                "RABBITMQ_MANAGEMENT_URL",
                "https://ops:mgmt-secret@rabbit.internal:15671/",
            ),
        ]),
    )
    .expect("valid");
    let url = config.management_url.as_ref().expect("set").url();
    assert_eq!(url.host_str(), Some("rabbit.internal"));
    assert_eq!(url.port(), Some(15671));
    let shown = format!("{config:?}");
    assert!(!shown.contains("mgmt-secret"), "{shown}");
    for refused in [
        "http://rabbit:15672/",
        "https://ops@rabbit.internal/",
        "rabbit.internal:15671",
    ] {
        assert_eq!(
            error_field(None, &[TLS_BROKER, ("RABBITMQ_MANAGEMENT_URL", refused)]),
            "RABBITMQ_MANAGEMENT_URL",
            "{refused}"
        );
    }
}

#[test]
fn the_reconcile_section_sets_the_period_and_when_a_key_counts_as_stuck() {
    let defaults = Config::from_sources(None, env(&[])).expect("defaults");
    assert_eq!(defaults.reconcile.interval.as_secs(), 300);
    assert_eq!(defaults.reconcile.stuck_after.as_secs(), 300);
    let file = "[reconcile]\ninterval_seconds = 60\nstuck_after_seconds = 600\n";
    let config = Config::from_sources(Some(file), env(&[])).expect("valid");
    assert_eq!(config.reconcile.interval.as_secs(), 60);
    assert_eq!(config.reconcile.stuck_after.as_secs(), 600);
    assert_eq!(
        error_field(Some("[reconcile]\ninterval_seconds = 1\n"), &[]),
        "reconcile.interval_seconds"
    );
    assert_eq!(error_field(Some("[reconcile]\nevery = 5\n"), &[]), "every");
}

#[test]
fn one_token_for_two_roles_is_refused_at_start() {
    let shared = "the-same-token-for-two-roles";
    let field = error_field(
        None,
        &[
            ("KEYLEDGER_ADMIN_TOKEN", shared),
            ("KEYLEDGER_AUDITOR_TOKEN", shared),
        ],
    );
    assert_eq!(field, "KEYLEDGER_AUDITOR_TOKEN");
    let error = Config::from_sources(
        None,
        env(&[
            ("KEYLEDGER_SERVICE_TOKEN", shared),
            ("KEYLEDGER_ADMIN_TOKEN", shared),
        ]),
    )
    .expect_err("refused");
    assert!(!error.to_string().contains(shared), "{error}");
    Config::from_sources(
        None,
        env(&[
            ("KEYLEDGER_ADMIN_TOKEN", shared),
            ("KEYLEDGER_AUDITOR_TOKEN", "another-token-of-its-own"),
        ]),
    )
    .expect("distinct tokens are fine");
}

#[test]
fn a_subscription_needs_both_its_public_url_and_a_long_secret() {
    let secret = "0123456789abcdef0123456789abcdef";
    let url = "https://sub.example.com";
    assert_eq!(
        error_field(None, &[("KEYLEDGER_SUB_PUBLIC_URL", url)]),
        "KEYLEDGER_SUB_SECRET"
    );
    assert_eq!(
        error_field(None, &[("KEYLEDGER_SUB_SECRET", secret)]),
        "KEYLEDGER_SUB_PUBLIC_URL"
    );
    assert_eq!(
        error_field(
            None,
            &[
                ("KEYLEDGER_SUB_PUBLIC_URL", url),
                ("KEYLEDGER_SUB_SECRET", "short")
            ]
        ),
        "KEYLEDGER_SUB_SECRET"
    );
    let config = Config::from_sources(
        None,
        env(&[
            ("KEYLEDGER_SUB_PUBLIC_URL", url),
            ("KEYLEDGER_SUB_SECRET", secret),
        ]),
    )
    .expect("valid");
    assert!(!format!("{config:?}").contains(secret));
    let urls = config.subscription_urls.expect("subscription on");
    assert_eq!(urls.base().as_str(), "https://sub.example.com/");
    assert!(
        Config::from_sources(None, env(&[]))
            .expect("defaults")
            .subscription_urls
            .is_none()
    );
}

#[test]
fn passwords_in_file_urls_and_credentials_in_panel_urls_are_refused() {
    let with_password = FILE.replace(
        "postgres://keyledger@db",
        "postgres://keyledger:db-password-in-file@db",
    );
    let error = Config::from_sources(Some(&with_password), env(&full_env())).expect_err("refused");
    assert_eq!(error.field, "database_url");
    assert!(
        !error.to_string().contains("db-password-in-file"),
        "{error}"
    );
    let amqp = format!("amqp_url = \"amqp://u:secret@rabbit/%2f\"\n{FILE}");
    assert_eq!(error_field(Some(&amqp), &full_env()), "amqp_url");
    // The same URLs from the environment are how passwords are meant to arrive.
    let mut pairs = full_env();
    pairs.push((
        "DATABASE_URL",
        "postgres://keyledger:db-password@db:5432/keyledger",
    ));
    Config::from_sources(Some(FILE), env(&pairs)).expect("environment may carry passwords");

    let credentials = FILE.replace(
        "https://panel.example.com:2053/secretpath",
        "https://admin:hunter2@panel.example.com:2053/secretpath",
    );
    let error = Config::from_sources(Some(&credentials), env(&full_env())).expect_err("refused");
    assert_eq!(error.field, "locations[0].panel_url");
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[test]
fn a_plain_http_panel_needs_to_be_allowed_explicitly() {
    let plain = FILE.replace(
        "https://panel.example.com:2053/secretpath",
        "http://127.0.0.1:2053/secretpath",
    );
    assert_eq!(
        error_field(Some(&plain), &full_env()),
        "locations[0].panel_url"
    );
    let allowed = plain.replace(
        "public_host = \"ams.example.com\"",
        "public_host = \"ams.example.com\"\nallow_plain_http = true",
    );
    let config = Config::from_sources(Some(&allowed), env(&full_env())).expect("allowed");
    assert_eq!(config.locations[0].panel_url.scheme(), "http");
}

#[test]
fn a_bot_webhook_needs_https_and_a_long_secret_and_polls_otherwise() {
    let secret = "webhook-secret_0123456789abcdefXYZ";
    let url = "https://bot.example.com/telegram/webhook";
    assert_eq!(
        Config::from_sources(None, env(&[]))
            .expect("defaults")
            .bot_ingress,
        service::config::BotIngress::Polling
    );
    assert_eq!(
        error_field(None, &[("KEYLEDGER_BOT_WEBHOOK_URL", url)]),
        "KEYLEDGER_BOT_WEBHOOK_SECRET"
    );
    assert_eq!(
        error_field(None, &[("KEYLEDGER_BOT_WEBHOOK_SECRET", secret)]),
        "KEYLEDGER_BOT_WEBHOOK_URL"
    );
    for bad_secret in [
        "short",
        "has spaces in it and is long enough!!",
        &"x".repeat(257),
    ] {
        assert_eq!(
            error_field(
                None,
                &[
                    ("KEYLEDGER_BOT_WEBHOOK_URL", url),
                    ("KEYLEDGER_BOT_WEBHOOK_SECRET", bad_secret)
                ]
            ),
            "KEYLEDGER_BOT_WEBHOOK_SECRET",
            "{bad_secret:?}"
        );
    }
    assert_eq!(
        error_field(
            None,
            &[
                (
                    "KEYLEDGER_BOT_WEBHOOK_URL",
                    "http://bot.example.com/telegram/webhook"
                ),
                ("KEYLEDGER_BOT_WEBHOOK_SECRET", secret)
            ]
        ),
        "KEYLEDGER_BOT_WEBHOOK_URL"
    );
    let config = Config::from_sources(
        None,
        env(&[
            ("KEYLEDGER_BOT_WEBHOOK_URL", url),
            ("KEYLEDGER_BOT_WEBHOOK_SECRET", secret),
            ("KEYLEDGER_BOT_WEBHOOK_ADDR", "0.0.0.0:9443"),
        ]),
    )
    .expect("valid");
    assert!(!format!("{config:?}").contains(secret));
    let service::config::BotIngress::Webhook(webhook) = config.bot_ingress else {
        panic!("a webhook when its URL is set");
    };
    assert_eq!(webhook.url.as_str(), url);
    assert_eq!(webhook.listen.to_string(), "0.0.0.0:9443");
}
