//! English.

use time::OffsetDateTime;

use super::{CardState, Milestone, Texts, escape, utc_parts};

pub struct English;

fn link_block(link: Option<&str>) -> String {
    match link {
        Some(link) => format!(
            "\n\n<code>{}</code>\n\nTap the link to copy it, or scan the QR code in v2rayNG, Hiddify or Streisand.",
            escape(link)
        ),
        None => "\n\nThe link is not available right now; open /key again in a minute.".to_owned(),
    }
}

fn expiry_line(texts: &English, expires_at: Option<OffsetDateTime>) -> String {
    match expires_at {
        Some(at) => format!("\nValid until: {}", texts.date(at)),
        None => "\nValid until: no end date".to_owned(),
    }
}

const SORRY: &str = "The server is answering again — sorry for the wait.\n";

impl Texts for English {
    fn command_start(&self) -> &'static str {
        "Main menu"
    }
    fn command_key(&self) -> &'static str {
        "Get or show your VPN key"
    }
    fn command_history(&self) -> &'static str {
        "What happened to your keys"
    }
    fn command_help(&self) -> &'static str {
        "What this bot can do"
    }

    fn button_get_key(&self) -> &'static str {
        "🔑 My key"
    }
    fn button_history(&self) -> &'static str {
        "📜 History"
    }
    fn button_help(&self) -> &'static str {
        "❓ Help"
    }
    fn button_refresh(&self) -> &'static str {
        "🔄 Refresh"
    }
    fn button_revoke(&self) -> &'static str {
        "🗑 Revoke"
    }
    fn button_confirm_refresh(&self) -> &'static str {
        "✅ Yes, refresh"
    }
    fn button_confirm_revoke(&self) -> &'static str {
        "✅ Yes, revoke"
    }
    fn button_cancel(&self) -> &'static str {
        "✖️ Cancel"
    }

    fn greeting(&self, first_name: &str) -> String {
        format!(
            "Hello, {}! 👋\nI hand out your personal VPN key and keep it working. Choose what to do:",
            escape(first_name)
        )
    }

    fn help(&self) -> String {
        "<b>What I can do</b>\n\
         🔑 <b>My key</b> (/key) — get a VPN key, or show the one you have: a link to copy and a QR code to scan.\n\
         🔄 <b>Refresh</b> — replace your key with a new one. The old one stops working, for example if someone else got hold of it.\n\
         🗑 <b>Revoke</b> — switch your key off for good. You can get a new one at any time.\n\
         📜 <b>History</b> (/history) — when your key was issued, refreshed, revoked or expired.\n\
         I message you when a key is ready, refreshed, revoked or about to expire."
            .to_owned()
    }

    fn choose_location(&self) -> String {
        "Which location do you want a key for?".to_owned()
    }

    fn key_card(
        &self,
        location: &str,
        state: CardState,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
    ) -> String {
        let location = escape(location);
        match state {
            CardState::Active => format!(
                "🔑 <b>Your key for {location}</b>{}{}",
                expiry_line(self, expires_at),
                link_block(link)
            ),
            CardState::Provisioning => format!(
                "⏳ Your key for {location} is being set up on the server. I will message you as soon as it is ready."
            ),
            CardState::Rotating => format!(
                "⏳ Your key for {location} is being refreshed. I will send you the new one as soon as it is ready."
            ),
            CardState::Revoking => format!("⏳ Your key for {location} is being switched off."),
            CardState::Revoked => format!(
                "Your key for {location} is revoked. Press «{}» to get a new one.",
                self.button_get_key()
            ),
            CardState::Expired => format!(
                "Your key for {location} has expired. Press «{}» to get a new one.",
                self.button_get_key()
            ),
            CardState::Failed => format!(
                "⚠️ The server for {location} is not answering. We keep trying and will message you when your key is ready."
            ),
        }
    }

    fn key_requested(&self, location: &str) -> String {
        format!(
            "⏳ Setting up your key for {}. I will message you with the link and QR code as soon as the server confirms it.",
            escape(location)
        )
    }

    fn confirm_refresh(&self, location: &str) -> String {
        format!(
            "Refresh your key for {}?\nThe current key <b>stops working</b>; you will need to add the new one to your app.",
            escape(location)
        )
    }

    fn confirm_revoke(&self, location: &str) -> String {
        format!(
            "Revoke your key for {}?\nIt <b>stops working</b> for good. You can get a new key later.",
            escape(location)
        )
    }

    fn refresh_started(&self, location: &str) -> String {
        format!(
            "🔄 Refreshing your key for {}… I will send you the new link and QR code as soon as the server has it.",
            escape(location)
        )
    }

    fn refresh_already_running(&self, location: &str) -> String {
        format!(
            "🔄 Your key for {} is already being refreshed; the new one is on its way.",
            escape(location)
        )
    }

    fn revoke_started(&self, location: &str) -> String {
        format!(
            "🗑 Revoking your key for {}… I will tell you when it is switched off.",
            escape(location)
        )
    }

    fn cancelled(&self) -> String {
        "OK, nothing changed.".to_owned()
    }

    fn not_your_key(&self) -> String {
        "Sorry, this button belongs to someone else's key. Nothing was changed.".to_owned()
    }

    fn stale_button(&self) -> String {
        "This button is out of date, so nothing was changed. Here is your key as it is now."
            .to_owned()
    }

    fn no_keys(&self) -> String {
        format!(
            "You have no key yet. Press «{}» to get one.",
            self.button_get_key()
        )
    }

    fn history_title(&self, location: &str) -> String {
        format!("📜 <b>Your key for {}</b>", escape(location))
    }

    fn milestone(&self, milestone: Milestone) -> &'static str {
        match milestone {
            Milestone::Issued => "issued",
            Milestone::Ready => "ready on the server",
            Milestone::Refreshed => "refreshed",
            Milestone::Revoked => "revoked",
            Milestone::Expired => "expired",
            Milestone::Renewed => "extended",
            Milestone::Repaired => "repaired on the server",
            Milestone::Failed => "server problem",
        }
    }

    fn unknown_input(&self) -> String {
        "I only understand the buttons and the commands /key, /history and /help.".to_owned()
    }

    fn try_again_later(&self) -> String {
        "Something went wrong on our side. Please try again in a minute.".to_owned()
    }

    fn unknown_location(&self) -> String {
        "This location is no longer offered. Please choose another one.".to_owned()
    }

    fn notify_ready(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        format!(
            "{}✅ <b>Your key for {} is ready.</b>{}{}",
            if after_failure { SORRY } else { "" },
            escape(location),
            expiry_line(self, expires_at),
            link_block(link)
        )
    }

    fn notify_refreshed(
        &self,
        location: &str,
        link: Option<&str>,
        expires_at: Option<OffsetDateTime>,
        after_failure: bool,
    ) -> String {
        format!(
            "{}✅ <b>Your key for {} was refreshed.</b> The old key no longer works; add this new one to your app.{}{}",
            if after_failure { SORRY } else { "" },
            escape(location),
            expiry_line(self, expires_at),
            link_block(link)
        )
    }

    fn notify_revoked(&self, location: &str) -> String {
        format!(
            "🗑 Your key for {} is revoked and no longer works.",
            escape(location)
        )
    }

    fn notify_expired(&self, location: &str) -> String {
        format!(
            "⌛ Your key for {} has expired and no longer works.",
            escape(location)
        )
    }

    fn notify_renewed(&self, location: &str, expires_at: OffsetDateTime) -> String {
        format!(
            "📅 Your key for {} was extended until {}.",
            escape(location),
            self.date(expires_at)
        )
    }

    fn notify_failed(&self, location: &str) -> String {
        format!(
            "⚠️ The server for {} is not answering right now. We keep trying and will message you when it is done.",
            escape(location)
        )
    }

    fn expiry_warning(&self, location: &str, expires_at: OffsetDateTime) -> String {
        format!(
            "⏰ Your key for {} expires on {}.",
            escape(location),
            self.date(expires_at)
        )
    }

    fn date(&self, at: OffsetDateTime) -> String {
        let (y, mo, d, h, mi) = utc_parts(at);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
    }
}
