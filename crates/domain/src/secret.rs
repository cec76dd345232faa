//! [`Secret`]: a password or token that cannot leak through `Debug`.
//!
//! Panel passwords and API tokens, the HTTP API's bearer tokens and the Telegram bot
//! token all travel through configuration types that derive `Debug`, and those types end
//! up in logs. One newtype with a redacting `Debug` makes that safe everywhere, and it
//! lives here, in the crate every other crate already depends on, so the panel client,
//! the HTTP API and the binary share one type instead of each depending on another for
//! it. It is pure data — no I/O, no clock — so it belongs in the functional core as much
//! as anything does.

use std::fmt;

/// A password or API token. It only leaves this type through [`Secret::expose`], so a
/// derived `Debug` on anything holding it cannot leak it into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced, for logs and error messages
    /// that quote something which may contain it (a URL with the Bot API token in it).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_every_occurrence() {
        let secret = Secret::new("123:abc");
        assert_eq!(
            secret.scrub("https://api/bot123:abc/getMe and 123:abc"),
            "https://api/bot[redacted]/getMe and [redacted]"
        );
        assert_eq!(Secret::new("").scrub("text"), "text");
    }

    #[test]
    fn debug_is_redacted_and_expose_returns_the_value() {
        let secret = Secret::new("hunter2-password");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(
            format!("{:?}", Some(secret.clone())),
            "Some(Secret([redacted]))"
        );
        assert_eq!(secret.expose(), "hunter2-password");
    }
}
