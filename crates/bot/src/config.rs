//! The bot role's settings: the token, the Bot API URL, the locations offered and the timings.
//! `service` builds a [`BotConfig`] from its configuration; the type lives here because
//! `service` depends on this crate, not the other way round. The token has a type of its own
//! so that it cannot reach a log through `Debug` or an error message.

use std::fmt;
use std::time::Duration;

use domain::LocationId;
use url::Url;

/// The bot's token. It is the bot's whole identity to Telegram, so it is never shown:
/// `Debug` and `Display` print a placeholder, and errors are scrubbed of it before logging.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl BotToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token replaced, for logs and error messages.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "[token]")
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BotToken([redacted])")
    }
}

/// A location users can choose, as they see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotLocation {
    pub id: LocationId,
    pub name: String,
}

/// Everything the bot role needs besides the event store and the broker.
#[derive(Debug, Clone)]
pub struct BotConfig {
    pub token: BotToken,
    /// The Bot API base URL (`https://api.telegram.org`, or a fake one in tests).
    pub api_url: Url,
    /// The locations offered, in the order they are shown.
    pub locations: Vec<BotLocation>,
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
}

impl BotConfig {
    /// A configuration with the defaults for everything but the token, the API URL and
    /// the locations.
    pub fn new(token: BotToken, api_url: Url, locations: Vec<BotLocation>) -> Self {
        Self {
            token,
            api_url,
            locations,
            key_lifetime: None,
            expiry_warning: Duration::from_secs(3 * 24 * 3600),
            expiry_check_every: Duration::from_secs(60),
            poll_timeout: Duration::from_secs(25),
            send_poll_every: Duration::from_millis(500),
        }
    }

    pub fn location(&self, id: &str) -> Option<&BotLocation> {
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
    fn the_token_never_shows() {
        let token = BotToken::new("123456:ABC-secret");
        let config = BotConfig::new(
            token.clone(),
            Url::parse("http://127.0.0.1:1").expect("url"),
            vec![],
        );
        assert!(!format!("{config:?}").contains("ABC-secret"));
        assert_eq!(
            token.scrub("error sending request for url (http://x/bot123456:ABC-secret/getMe)"),
            "error sending request for url (http://x/bot[token]/getMe)"
        );
    }
}
