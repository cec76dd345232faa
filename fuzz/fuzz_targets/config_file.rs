//! The configuration file is text an operator (or a tool) writes, and its errors go to the
//! terminal and the logs. With any file text and one fixed environment holding every
//! secret the service reads (database and broker passwords, bearer tokens, the bot token,
//! the subscription secret, the notary key, panel passwords and tokens that locations name),
//! `Config::from_sources` may not panic, and neither its error (shown and debug-printed)
//! nor a configuration it accepts (debug-printed, URLs shown) may carry a secret's value,
//! unless the file itself wrote that value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use service::config::Config;

/// One variable of the fixed environment: its name as the service reads it, a made-up
/// value, and the part of that value that is secret (`None`: nothing is).
struct Variable {
    name: &'static str,
    value: &'static str,
    secret: Option<&'static str>,
}

const fn variable(name: &'static str, value: &'static str, secret: &'static str) -> Variable {
    Variable {
        name,
        value,
        secret: Some(secret),
    }
}

/// A secret that is the whole value.
const fn whole(name: &'static str, value: &'static str) -> Variable {
    variable(name, value, value)
}

const ENVIRONMENT: &[Variable] = &[
    variable(
        "DATABASE_URL",
        "postgres://keyledger:db-pass-9f3Kq2@127.0.0.1:5432/keyledger",
        "db-pass-9f3Kq2",
    ),
    variable(
        "DATABASE_OWNER_URL",
        "postgres://owner:owner-pass-Vt27xZ@127.0.0.1:5432/keyledger",
        "owner-pass-Vt27xZ",
    ),
    variable(
        "AMQP_URL",
        "amqp://kl:amqp-pass-Hb55wQ@127.0.0.1:5672/%2f",
        "amqp-pass-Hb55wQ",
    ),
    whole("KEYLEDGER_ADMIN_TOKEN", "admin-token-4R8sLm1pQz7Xc"),
    whole("KEYLEDGER_AUDITOR_TOKEN", "auditor-token-Kd93hWv0bN5"),
    whole("KEYLEDGER_SERVICE_TOKEN", "service-token-Zp61yTq4gJ2"),
    variable(
        "TELEGRAM_BOT_TOKEN",
        "123456:bot-token-Ae7Lr2Wc9Uh",
        "bot-token-Ae7Lr2Wc9Uh",
    ),
    Variable {
        name: "KEYLEDGER_SUB_PUBLIC_URL",
        value: "https://sub.example.org/",
        secret: None,
    },
    whole("KEYLEDGER_SUB_SECRET", "sub-secret-Qm4Tn8Vb2Yx6Rk0Ld5Wp7Ea"),
    // base64 of 32 bytes: a seed the notary accepts.
    whole(
        "KEYLEDGER_NOTARY_KEY",
        "bm90YXJ5LXNlZWQtZm9yLWZ1enppbmctb25seS0zMmI=",
    ),
    // What the seeds' locations name in `password_env` and `api_token_env`.
    whole("PANEL_PASSWORD", "panel-pass-Gx5Jw8Nc3Bv"),
    whole("PANEL_TOKEN", "panel-token-Hs2Mk7Pf4Dq"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(file) = std::str::from_utf8(data) else {
        return;
    };
    let environment = |name: &str| {
        ENVIRONMENT
            .iter()
            .find(|variable| variable.name == name)
            .map(|variable| variable.value.to_owned())
    };
    let loaded = Config::from_sources(Some(file), environment);
    // An empty file takes every setting from the environment, which must be complete:
    // otherwise every run would stop at the same environment error and fuzz nothing.
    if file.is_empty() {
        assert!(
            loaded.is_ok(),
            "the fixed environment is refused: {loaded:?}"
        );
    }
    let shown = match loaded {
        Ok(config) => format!(
            "{config:?}\n{}\n{}\n{}",
            config.database_url, config.database_owner_url, config.amqp_url
        ),
        Err(error) => format!("{error}\n{error:?}"),
    };
    for secret in ENVIRONMENT.iter().filter_map(|variable| variable.secret) {
        // A secret the file spells out itself may come back quoted; one it only names,
        // never.
        if !file.contains(secret) {
            assert!(!shown.contains(secret), "{secret:?} shown in:\n{shown}");
        }
    }
});
