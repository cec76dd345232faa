//! The bot role's settings: the token, the Bot API URL, the locations offered, the
//! subscription URLs (when the `sub` role serves them), the timings and who may ask for keys.
//! `service` builds a [`BotConfig`] from its configuration; the type lives here because
//! `service` depends on this crate, not the other way round. The token is a
//! `domain::Secret`, so it cannot reach a log through `Debug`, and errors quoting it are
//! scrubbed.

use std::collections::BTreeSet;
use std::time::Duration;

use domain::{Location, Secret, SubscriptionUrls, UserId};

use crate::ingress::Ingress;
use crate::limits::UserLimits;
use url::Url;

/// Everything the bot role needs besides the event store and the broker.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// The bot's whole identity to Telegram: never shown, and scrubbed from errors.
    pub token: Secret,
    /// The Bot API base URL (`https://api.telegram.org`, or a fake one in tests).
    pub api_url: Url,
    /// The locations offered, in the order they are shown.
    pub locations: Vec<Location>,
    /// How long a key requested through the bot lasts; `None`: no end date.
    pub key_lifetime: Option<Duration>,
    /// How long before a key's expiry the user is warned.
    pub expiry_warning: Duration,
    /// How often expiry warnings are looked for.
    pub expiry_check_every: Duration,
    /// How long one `getUpdates` call waits for updates (Telegram's long polling).
    pub poll_timeout: Duration,
    /// How often the sender looks for owed notifications when nobody woke it.
    pub send_poll_every: Duration,
    /// How users' subscription URLs are made; `None` when no `sub` role serves them, and
    /// the bot then hands out per-location links only.
    pub subscription_urls: Option<SubscriptionUrls>,
    /// How much of each costly thing one user may do per window.
    pub limits: UserLimits,
    /// How updates come in: long polling (the default) or a webhook.
    pub ingress: Ingress,
    /// Who may ask for a key by themselves.
    pub request_policy: RequestPolicy,
}

/// Who may ask the bot for a key by themselves (docs/bot.md, "Who may ask for keys"). Keys
/// an admin or a service requests over the API are the operator's decision and pass
/// regardless; a blocked user gets none either way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RequestPolicy {
    #[default]
    Anyone,
    /// Only these Telegram users.
    Allowlist(BTreeSet<UserId>),
}

impl RequestPolicy {
    pub fn admits(&self, user: UserId) -> bool {
        match self {
            Self::Anyone => true,
            Self::Allowlist(users) => users.contains(&user),
        }
    }
}

impl BotConfig {
    /// A configuration with the defaults for everything but the token, the API URL and
    /// the locations.
    pub fn new(token: Secret, api_url: Url, locations: Vec<Location>) -> Self {
        Self {
            token,
            api_url,
            locations,
            key_lifetime: None,
            expiry_warning: Duration::from_secs(3 * 24 * 3600),
            expiry_check_every: Duration::from_secs(60),
            poll_timeout: Duration::from_secs(25),
            send_poll_every: Duration::from_millis(500),
            subscription_urls: None,
            limits: UserLimits::default(),
            ingress: Ingress::Polling,
            request_policy: RequestPolicy::Anyone,
        }
    }

    /// The same configuration, showing subscriptions made with `urls` (if any).
    pub fn with_subscription_urls(mut self, urls: Option<SubscriptionUrls>) -> Self {
        self.subscription_urls = urls;
        self
    }

    pub fn location(&self, id: &str) -> Option<&Location> {
        self.locations.iter().find(|l| l.id.as_str() == id)
    }

    /// The name users see for a location id; the id itself for one no longer configured.
    pub fn location_name(&self, id: &str) -> String {
        self.location(id)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowlist_admits_only_its_users() {
        let listed = UserId::new(123).expect("valid");
        let stranger = UserId::new(456).expect("valid");
        let policy = RequestPolicy::Allowlist(BTreeSet::from([listed]));
        assert!(policy.admits(listed));
        assert!(!policy.admits(stranger));
        assert!(RequestPolicy::default().admits(stranger));
    }

    #[test]
    fn the_token_never_shows() {
        let token = Secret::new("123456:ABC-secret");
        let config = BotConfig::new(
            token.clone(),
            Url::parse("http://127.0.0.1:1").expect("url"),
            vec![],
        );
        assert!(!format!("{config:?}").contains("ABC-secret"));
        assert_eq!(
            token.scrub("error sending request for url (http://x/bot123456:ABC-secret/getMe)"),
            "error sending request for url (http://x/bot[redacted]/getMe)"
        );
    }
}
