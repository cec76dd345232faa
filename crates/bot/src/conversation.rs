//! The conversation: what the bot answers to each update. Commands and button presses
//! enter here; the user's identity comes from Telegram's update, never from callback data,
//! and every key a button names is checked against the presser in the log before anything
//! is done to it. When subscriptions are served, the user's subscription leads `/key`, and
//! a subscription a button names must be the presser's own. A user an administrator blocked
//! gets no key and no new link, and with an allowlist only listed users may ask for keys.

use std::sync::Arc;

use domain::{
    DomainError, EventType, KeyCommand, KeyId, KeyState, LocationId, Phase, RequestKey, RevokeKey,
    RotateKey, SubscriptionId, SubscriptionState, UserId,
};
use eventstore::{
    AccessControl, AccessStatus, Actor, ActorKind, EventMetadata, ExecuteError, KeyLedger,
    RecordedEvent, Subscriptions,
};
use teloxide::types::{CallbackQuery, Message, Update, UpdateKind, User};
use time::OffsetDateTime;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::callback::{Action, KeyRef, SubRef};
use crate::card::{
    card_keyboard, card_state, current_link, main_menu, milestone, subscription_keyboard,
};
use crate::config::BotConfig;
use crate::error::BotError;
use crate::limits::{self, Costly, Spent};
use crate::store;
use crate::telegram::{Button, Keyboard, SendError, Telegram, with_rate_limit};
use crate::texts::{CardState, KeyCard, Lang, Texts};

/// Namespace of the command ids the bot derives (UUID v5), so that a retried update or a
/// double-pressed button names the same command and the log applies it once.
const COMMAND_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6564_6765_8000_0000_0000_0b07);

/// Longest history shown per key; older entries are summarised by an ellipsis.
const HISTORY_ENTRIES: usize = 25;

/// Why the revocation was recorded, in the log.
const REVOKE_REASON: &str = "revoked by the user in Telegram";

/// Why a new subscription link was made, in the log.
const NEW_LINK_REASON: &str = "new link requested by the user in Telegram";

/// Everything the update handler and the notifier share.
#[derive(Debug)]
pub struct Context {
    pub ledger: KeyLedger,
    pub subscriptions: Subscriptions,
    pub telegram: Telegram,
    pub config: BotConfig,
    /// Wakes the notification sender when something is owed.
    pub wake_sender: Arc<Notify>,
    /// This replica, as the partition leases and the handled updates name it.
    pub replica: Uuid,
}

/// Who is talking, from the update itself.
struct Speaker {
    user: UserId,
    chat: i64,
    lang: Lang,
}

impl Speaker {
    fn texts(&self) -> &'static dyn Texts {
        self.lang.texts()
    }

    fn actor(&self) -> Actor {
        Actor::new(ActorKind::TelegramUser, self.user.to_string())
    }
}

/// A command id derived from what makes the command unique.
fn command_id(name: &str) -> Uuid {
    Uuid::new_v5(&COMMAND_NAMESPACE, name.as_bytes())
}

impl Context {
    pub(crate) fn pool(&self) -> &sqlx::PgPool {
        self.ledger.store().pool()
    }

    /// Handles one update once: an update id already handled is skipped.
    pub async fn handle_update(&self, update: Update) -> Result<(), BotError> {
        let update_id = i64::from(update.id.0);
        if store::update_seen(self.pool(), update_id).await? {
            tracing::debug!(update_id, "update already handled");
            return Ok(());
        }
        match update.kind {
            UpdateKind::Message(message) => self.on_message(update_id, &message).await?,
            UpdateKind::CallbackQuery(query) => self.on_callback(update_id, &query).await?,
            // An edit of an earlier message is not a new request; answering it would
            // repeat what the original got.
            UpdateKind::EditedMessage(_) => {}
            _ => {}
        }
        store::mark_update(self.pool(), update_id, self.replica).await?;
        Ok(())
    }

    async fn speaker(&self, user: &User, chat: i64) -> Result<Option<Speaker>, BotError> {
        let Ok(user_id) = UserId::new(user.id.0 as i64) else {
            return Ok(None);
        };
        if user.is_bot {
            return Ok(None);
        }
        let lang = Lang::from_code(user.language_code.as_deref());
        store::remember_user(self.pool(), user_id.get(), chat, lang).await?;
        Ok(Some(Speaker {
            user: user_id,
            chat,
            lang,
        }))
    }

    async fn on_message(&self, update_id: i64, message: &Message) -> Result<(), BotError> {
        // Keys are personal: the bot talks in private chats only.
        if !message.chat.is_private() {
            return Ok(());
        }
        let Some(from) = message.from.as_ref() else {
            return Ok(());
        };
        let Some(speaker) = self.speaker(from, message.chat.id.0).await? else {
            return Ok(());
        };
        if self.over_limit(&speaker, Costly::Message).await? {
            return Ok(());
        }
        let command = message.text().and_then(command_of);
        let outcome = match command.as_deref() {
            Some("start") => self.greet(&speaker, &from.first_name).await,
            Some("help") => self.help(&speaker).await,
            Some("key") => self.my_key(&speaker, update_id).await,
            Some("history") => self.history(&speaker).await,
            // Stickers, photos, free text of any length, unknown commands: a pointer to
            // what works, never an echo of the input.
            _ => {
                let texts = speaker.texts();
                self.send(&speaker, &texts.unknown_input(), Some(&main_menu(texts)))
                    .await
            }
        };
        self.or_apologise(&speaker, outcome).await
    }

    /// Tells the user plainly when something on our side failed, then reports the error.
    async fn or_apologise(
        &self,
        speaker: &Speaker,
        outcome: Result<(), BotError>,
    ) -> Result<(), BotError> {
        if let Err(error) = &outcome {
            tracing::error!(user_id = %speaker.user, %error, "could not answer an update");
            if !matches!(error, BotError::Telegram(_)) {
                let _ = self
                    .send(speaker, &speaker.texts().try_again_later(), None)
                    .await;
            }
        }
        outcome
    }

    async fn send(
        &self,
        speaker: &Speaker,
        html: &str,
        keyboard: Option<&Keyboard>,
    ) -> Result<(), BotError> {
        with_rate_limit(|| self.telegram.send_text(speaker.chat, html, keyboard))
            .await
            .map(|_| ())
            .map_err(telegram_error)
    }

    async fn edit_or_send(
        &self,
        speaker: &Speaker,
        message_id: Option<i32>,
        html: &str,
        keyboard: Option<&Keyboard>,
    ) -> Result<(), BotError> {
        match message_id {
            Some(id) => {
                with_rate_limit(|| self.telegram.edit_text(speaker.chat, id, html, keyboard))
                    .await
                    .map_err(telegram_error)
            }
            None => self.send(speaker, html, keyboard).await,
        }
    }

    async fn greet(&self, speaker: &Speaker, first_name: &str) -> Result<(), BotError> {
        let texts = speaker.texts();
        self.send(
            speaker,
            &texts.greeting(first_name),
            Some(&main_menu(texts)),
        )
        .await
    }

    async fn help(&self, speaker: &Speaker) -> Result<(), BotError> {
        let texts = speaker.texts();
        let subscription = self.config.subscription_urls.is_some();
        self.send(speaker, &texts.help(subscription), Some(&main_menu(texts)))
            .await
    }

    /// The user's subscription (when they hold a key), then their key, or the choice of
    /// locations when there are several.
    async fn my_key(&self, speaker: &Speaker, update_id: i64) -> Result<(), BotError> {
        let texts = speaker.texts();
        match self.config.locations.as_slice() {
            [] => self.send(speaker, &texts.unknown_location(), None).await,
            [only] => {
                let location = only.id.clone();
                self.key_at(speaker, &location, update_id, true).await
            }
            several => {
                if self.refused_as_blocked(speaker, None).await? {
                    return Ok(());
                }
                let mut rows = Vec::new();
                let mut holds_a_key = false;
                for location in several {
                    let key_id = KeyId::for_user_at(speaker.user, &location.id);
                    let (state, _) = self.ledger.load(key_id).await?;
                    holds_a_key |= state.phase.is_live();
                    let mark = match state.phase {
                        Phase::Depleted => "📉 ",
                        phase if phase.is_live() => "✅ ",
                        _ => "",
                    };
                    rows.push(vec![Button::Press(
                        format!("{mark}{}", location.name),
                        Action::KeyAt(location.id.as_str().to_owned()),
                    )]);
                }
                if !holds_a_key && !self.config.request_policy.admits(speaker.user) {
                    return self.tell_not_allowed(speaker).await;
                }
                if holds_a_key {
                    self.show_subscription(speaker).await?;
                }
                self.send(speaker, &texts.choose_location(), Some(&rows))
                    .await
            }
        }
    }

    /// Whether the user holds a live key at a configured location other than `except`.
    async fn holds_key_besides(&self, user: UserId, except: KeyId) -> Result<bool, BotError> {
        for location in &self.config.locations {
            let key_id = KeyId::for_user_at(user, &location.id);
            if key_id == except {
                continue;
            }
            if self.ledger.load(key_id).await?.0.phase.is_live() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Shows the user's key at `location`, asking for one first if they hold none. With
    /// `lead_with_subscription` (the user asked for "their key"), the subscription comes
    /// first when they hold the key; a first key always brings the subscription with it.
    async fn key_at(
        &self,
        speaker: &Speaker,
        location: &LocationId,
        update_id: i64,
        lead_with_subscription: bool,
    ) -> Result<(), BotError> {
        let texts = speaker.texts();
        let access = self.access_status(speaker).await?;
        if access.state.blocked {
            return self.tell_blocked(speaker).await;
        }
        let key_id = KeyId::for_user_at(speaker.user, location);
        let (state, events) = self.ledger.load(key_id).await?;
        let name = self.config.location_name(location.as_str());
        if state.phase.is_live() || state.phase == Phase::Revoking {
            if lead_with_subscription && state.phase.is_live() {
                self.show_subscription(speaker).await?;
            }
            return self.show_key(speaker, key_id).await;
        }
        if state.phase == Phase::Revoked && revoked_by_staff(&events, &access) {
            tracing::info!(user_id = %speaker.user, %key_id, "refused a new key: revoked by an administrator");
            let texts = speaker.texts();
            return self
                .send(speaker, &texts.revoked_by_admin(&name), None)
                .await;
        }
        if !self.config.request_policy.admits(speaker.user) {
            return self.tell_not_allowed(speaker).await;
        }
        if self.over_limit(speaker, Costly::KeyRequest).await? {
            return Ok(());
        }
        let now = OffsetDateTime::now_utc();
        let request = RequestKey {
            user_id: speaker.user,
            location: location.clone(),
            fresh_client_uuid: Uuid::new_v4(),
            expires_at: self.config.key_lifetime.map(|lifetime| now + lifetime),
            traffic_limit_bytes: 0,
            now,
        };
        let id = command_id(&format!("update/{update_id}/request/{key_id}"));
        let metadata = EventMetadata::for_command(id, speaker.actor());
        match self.access().request_key(key_id, &request, &metadata).await {
            Ok(_) => {}
            // Blocked between the check above and the request: it was revoked at once.
            Err(ExecuteError::Refused(DomainError::UserBlocked)) => {
                return self.tell_blocked(speaker).await;
            }
            Err(source) => return Err(BotError::Execute { key_id, source }),
        }
        tracing::info!(user_id = %speaker.user, %key_id, location = %location, "key requested from Telegram");
        let subscription = self.config.subscription_urls.is_some();
        // The user's first key: the subscription (issued now) is what they add to the app;
        // it shows the key as soon as the panel has it.
        if subscription && !self.holds_key_besides(speaker.user, key_id).await? {
            self.show_subscription(speaker).await?;
        }
        let keyboard = vec![vec![Button::press(texts.button_history(), Action::History)]];
        self.send(
            speaker,
            &texts.key_requested(&name, subscription),
            Some(&keyboard),
        )
        .await
    }

    /// The user's subscription, issued now if it was not yet (idempotent).
    async fn own_subscription_state(
        &self,
        speaker: &Speaker,
    ) -> Result<SubscriptionState, BotError> {
        let id = command_id(&format!("subscription/{}/issue", speaker.user));
        let metadata = EventMetadata::for_command(id, speaker.actor());
        self.subscriptions
            .ensure_issued(speaker.user, &metadata)
            .await
            .map_err(|source| BotError::Subscription {
                user_id: speaker.user,
                source,
            })
    }

    /// Sends the user's subscription: its URL (copyable, and as a button to its page), a
    /// QR code of it and which apps take it. Nothing when subscriptions are not served.
    async fn show_subscription(&self, speaker: &Speaker) -> Result<(), BotError> {
        if self.config.subscription_urls.is_none() {
            return Ok(());
        }
        let state = self.own_subscription_state(speaker).await?;
        self.send_subscription(speaker, state.generation).await
    }

    async fn send_subscription(&self, speaker: &Speaker, generation: u32) -> Result<(), BotError> {
        let Some(urls) = self.config.subscription_urls.as_ref() else {
            return Ok(());
        };
        let texts = speaker.texts();
        let id = SubscriptionId::for_user(speaker.user);
        let url = urls.url(id, generation);
        let png = crate::qr::png(&url)?;
        let keyboard = subscription_keyboard(texts, &url, id, generation);
        let caption = texts.subscription(&url);
        with_rate_limit(|| {
            self.telegram
                .send_photo(speaker.chat, png.clone(), &caption, Some(&keyboard))
        })
        .await
        .map(|_| ())
        .map_err(telegram_error)
    }

    async fn execute(
        &self,
        speaker: &Speaker,
        key_id: KeyId,
        command: &KeyCommand,
        command_id: Uuid,
    ) -> Result<eventstore::CommandOutcome, BotError> {
        let metadata = EventMetadata::for_command(command_id, speaker.actor());
        self.ledger
            .execute(key_id, command, &metadata)
            .await
            .map_err(|source| BotError::Execute { key_id, source })
    }

    /// The key's card: the link as copyable text and a QR code when the key is active, the
    /// expiry and the traffic the panel last reported.
    async fn show_key(&self, speaker: &Speaker, key_id: KeyId) -> Result<(), BotError> {
        let texts = speaker.texts();
        let (state, events) = self.ledger.load(key_id).await?;
        let Some(details) = state.details.as_ref() else {
            return self
                .send(speaker, &texts.no_keys(), Some(&main_menu(texts)))
                .await;
        };
        let Some(card) = card_state(&state) else {
            return Ok(());
        };
        let location = details.location.as_str().to_owned();
        let name = self.config.location_name(&location);
        let view = projector::load_view(self.pool(), key_id.as_uuid()).await?;
        let link = current_link(&state, &events, view.as_ref());
        let usage = store::key_usage(self.pool(), key_id.as_uuid()).await?;
        let html = texts.key_card(&KeyCard {
            location: &name,
            state: card,
            link: link.as_deref(),
            expires_at: details.expires_at,
            usage,
            subscription: self.config.subscription_urls.is_some(),
        });
        let keyboard = card_keyboard(texts, key_id, &state, &location);
        match link {
            Some(link) if card == CardState::Active => {
                let png = crate::qr::png(&link)?;
                with_rate_limit(|| {
                    self.telegram
                        .send_photo(speaker.chat, png.clone(), &html, Some(&keyboard))
                })
                .await
                .map(|_| ())
                .map_err(telegram_error)
            }
            _ => self.send(speaker, &html, Some(&keyboard)).await,
        }
    }

    /// Every key of the user, each with its timeline from the log.
    async fn history(&self, speaker: &Speaker) -> Result<(), BotError> {
        if self.over_limit(speaker, Costly::History).await? {
            return Ok(());
        }
        let texts = speaker.texts();
        let mut keys: Vec<KeyId> = self
            .config
            .locations
            .iter()
            .map(|l| KeyId::for_user_at(speaker.user, &l.id))
            .collect();
        for view in projector::user_views(self.pool(), speaker.user.get()).await? {
            let key_id = KeyId::from_uuid(view.key_id);
            if !keys.contains(&key_id) {
                keys.push(key_id);
            }
        }
        let mut sections = Vec::new();
        for key_id in keys {
            let (state, events) = self.ledger.load(key_id).await?;
            if let Some(details) = state.details.as_ref() {
                if details.user_id != speaker.user {
                    continue;
                }
                let name = self.config.location_name(details.location.as_str());
                sections.push(timeline(texts, &name, &events));
            }
        }
        if sections.is_empty() {
            return self
                .send(speaker, &texts.no_keys(), Some(&main_menu(texts)))
                .await;
        }
        self.send(speaker, &sections.join("\n\n"), Some(&main_menu(texts)))
            .await
    }

    async fn on_callback(&self, update_id: i64, query: &CallbackQuery) -> Result<(), BotError> {
        let message = query.message.as_ref();
        // Keys are personal: buttons live in the private chat with the presser. A press
        // from a group is not answered, and its chat is never remembered as the place to
        // send the user's key.
        if message.is_some_and(|m| !m.chat().is_private()) {
            return Ok(());
        }
        let chat = message
            .map(|m| m.chat().id.0)
            .unwrap_or(query.from.id.0 as i64);
        let message_id = message.map(|m| m.id().0);
        let Some(speaker) = self.speaker(&query.from, chat).await? else {
            return Ok(());
        };
        if self.over_limit(&speaker, Costly::Message).await? {
            return self.answer(&query.id.0, None).await;
        }
        let texts = speaker.texts();
        let Some(action) = query.data.as_deref().and_then(Action::decode) else {
            tracing::warn!(user_id = %speaker.user, "button press with data this bot never made");
            return self.answer(&query.id.0, Some(&texts.stale_button())).await;
        };
        let outcome = self
            .on_action(&speaker, &query.id.0, message_id, update_id, action)
            .await;
        self.or_apologise(&speaker, outcome).await
    }

    async fn answer(&self, query_id: &str, text: Option<&str>) -> Result<(), BotError> {
        // The spinner on the button stops either way after a while: a lost answer is not
        // worth failing the update for.
        if let Err(error) = with_rate_limit(|| self.telegram.answer_callback(query_id, text)).await
        {
            tracing::warn!(%error, "could not answer a button press");
        }
        Ok(())
    }

    async fn on_action(
        &self,
        speaker: &Speaker,
        query_id: &str,
        message_id: Option<i32>,
        update_id: i64,
        action: Action,
    ) -> Result<(), BotError> {
        let texts = speaker.texts();
        match action {
            Action::MyKey => {
                self.answer(query_id, None).await?;
                self.my_key(speaker, update_id).await
            }
            Action::KeyAt(location) => {
                let Some(location) = self.config.location(&location).map(|l| l.id.clone()) else {
                    return self.answer(query_id, Some(&texts.unknown_location())).await;
                };
                self.answer(query_id, None).await?;
                self.key_at(speaker, &location, update_id, false).await
            }
            Action::History => {
                self.answer(query_id, None).await?;
                self.history(speaker).await
            }
            Action::Help => {
                self.answer(query_id, None).await?;
                self.help(speaker).await
            }
            Action::Cancel => {
                self.answer(query_id, None).await?;
                self.edit_or_send(speaker, message_id, &texts.cancelled(), None)
                    .await
            }
            Action::AskRefresh(key) | Action::AskRevoke(key) => {
                let refresh = matches!(action, Action::AskRefresh(_));
                let Some((state, _)) = self.owned(speaker, query_id, key).await? else {
                    return Ok(());
                };
                if state.version != key.version || state.phase != Phase::Active {
                    return self.stale(speaker, query_id, key.key_id).await;
                }
                self.answer(query_id, None).await?;
                let name = self.location_of(&state);
                let subscription = self.config.subscription_urls.is_some();
                let (question, confirm) = if refresh {
                    (
                        texts.confirm_refresh(&name, subscription),
                        Button::press(texts.button_confirm_refresh(), Action::ConfirmRefresh(key)),
                    )
                } else {
                    (
                        texts.confirm_revoke(&name),
                        Button::press(texts.button_confirm_revoke(), Action::ConfirmRevoke(key)),
                    )
                };
                let keyboard = vec![vec![
                    confirm,
                    Button::press(texts.button_cancel(), Action::Cancel),
                ]];
                self.send(speaker, &question, Some(&keyboard)).await
            }
            Action::AskNewLink(sub) => {
                let Some(state) = self.owned_subscription(speaker, query_id, sub).await? else {
                    return Ok(());
                };
                if self.refused_as_blocked(speaker, Some(query_id)).await? {
                    return Ok(());
                }
                if state.generation != sub.generation {
                    return self.stale_subscription(speaker, query_id).await;
                }
                self.answer(query_id, None).await?;
                let keyboard = vec![vec![
                    Button::press(texts.button_confirm_new_link(), Action::ConfirmNewLink(sub)),
                    Button::press(texts.button_cancel(), Action::Cancel),
                ]];
                self.send(speaker, &texts.confirm_new_link(), Some(&keyboard))
                    .await
            }
            Action::ConfirmNewLink(sub) => {
                self.confirmed_new_link(speaker, query_id, message_id, sub)
                    .await
            }
            Action::ConfirmRefresh(key) => {
                self.confirmed(speaker, query_id, message_id, key, true)
                    .await
            }
            Action::ConfirmRevoke(key) => {
                self.confirmed(speaker, query_id, message_id, key, false)
                    .await
            }
        }
    }

    fn location_of(&self, state: &KeyState) -> String {
        state
            .details
            .as_ref()
            .map(|d| self.config.location_name(d.location.as_str()))
            .unwrap_or_default()
    }

    /// The key a button names, if it is the presser's; otherwise a polite refusal.
    async fn owned(
        &self,
        speaker: &Speaker,
        query_id: &str,
        key: KeyRef,
    ) -> Result<Option<(KeyState, Vec<RecordedEvent>)>, BotError> {
        let (state, events) = self.ledger.load(key.key_id).await?;
        match state.details.as_ref() {
            Some(details) if details.user_id == speaker.user => Ok(Some((state, events))),
            Some(_) => {
                tracing::warn!(user_id = %speaker.user, key_id = %key.key_id, "refused a button press for another user's key");
                self.answer(query_id, Some(&speaker.texts().not_your_key()))
                    .await?;
                self.send(speaker, &speaker.texts().not_your_key(), None)
                    .await?;
                Ok(None)
            }
            None => {
                self.answer(query_id, Some(&speaker.texts().stale_button()))
                    .await?;
                Ok(None)
            }
        }
    }

    /// A button shown for an earlier state of the key: say so, and show the key as it is.
    async fn stale(
        &self,
        speaker: &Speaker,
        query_id: &str,
        key_id: KeyId,
    ) -> Result<(), BotError> {
        self.answer(query_id, Some(&speaker.texts().stale_button()))
            .await?;
        self.show_key(speaker, key_id).await
    }

    /// A confirmed refresh or revocation: checked against the presser and the version the
    /// button was shown for, then run once.
    async fn confirmed(
        &self,
        speaker: &Speaker,
        query_id: &str,
        message_id: Option<i32>,
        key: KeyRef,
        refresh: bool,
    ) -> Result<(), BotError> {
        let texts = speaker.texts();
        let Some((state, _)) = self.owned(speaker, query_id, key).await? else {
            return Ok(());
        };
        let name = self.location_of(&state);
        let already_running = texts.refresh_already_running(&name);
        if state.version != key.version {
            if refresh && state.phase == Phase::Rotating {
                self.answer(query_id, None).await?;
                return self
                    .edit_or_send(speaker, message_id, &already_running, None)
                    .await;
            }
            return self.stale(speaker, query_id, key.key_id).await;
        }
        let costly = if refresh {
            Costly::Rotation
        } else {
            Costly::Revocation
        };
        if self.over_limit(speaker, costly).await? {
            return self.answer(query_id, None).await;
        }
        let (command, name_of_command, done) = if refresh {
            let rotate = KeyCommand::Rotate(RotateKey {
                fresh_client_uuid: Uuid::new_v4(),
            });
            let subscription = self.config.subscription_urls.is_some();
            (rotate, "rotate", texts.refresh_started(&name, subscription))
        } else {
            let revoke = KeyCommand::Revoke(RevokeKey {
                reason: REVOKE_REASON.to_owned(),
            });
            (revoke, "revoke", texts.revoke_started(&name))
        };
        // Named by the key and the version the button was shown for: the second of two
        // quick presses is the same command, and the log applies it once.
        let id = command_id(&format!("{name_of_command}/{}/{}", key.key_id, key.version));
        match self.execute(speaker, key.key_id, &command, id).await {
            Ok(_) => {}
            Err(BotError::Execute {
                source: ExecuteError::Refused(DomainError::RotationInProgress),
                ..
            }) => {
                self.answer(query_id, None).await?;
                return self
                    .edit_or_send(speaker, message_id, &already_running, None)
                    .await;
            }
            Err(BotError::Execute {
                source: ExecuteError::Refused(refusal),
                ..
            }) => {
                tracing::info!(user_id = %speaker.user, key_id = %key.key_id, %refusal, command = name_of_command, "refused");
                return self.stale(speaker, query_id, key.key_id).await;
            }
            Err(other) => return Err(other),
        }
        tracing::info!(user_id = %speaker.user, key_id = %key.key_id, command = name_of_command, "requested from Telegram");
        self.answer(query_id, None).await?;
        self.edit_or_send(speaker, message_id, &done, None).await
    }
}

impl Context {
    fn access(&self) -> AccessControl {
        AccessControl::new(self.ledger.store().clone())
    }

    async fn access_status(&self, speaker: &Speaker) -> Result<AccessStatus, BotError> {
        Ok(self.access().status(speaker.user).await?)
    }

    /// The speaker is blocked: no key, no new link; told so politely.
    async fn tell_blocked(&self, speaker: &Speaker) -> Result<(), BotError> {
        tracing::info!(user_id = %speaker.user, "refused: the user is blocked");
        self.send(speaker, &speaker.texts().user_blocked(), None)
            .await
    }

    /// Whether the speaker is blocked, and then told so (after answering the button press
    /// that asked, if one did); `true` means: do not go on.
    async fn refused_as_blocked(
        &self,
        speaker: &Speaker,
        query_id: Option<&str>,
    ) -> Result<bool, BotError> {
        if !self.access_status(speaker).await?.state.blocked {
            return Ok(false);
        }
        if let Some(query_id) = query_id {
            self.answer(query_id, None).await?;
        }
        self.tell_blocked(speaker).await?;
        Ok(true)
    }

    /// The speaker is not on the allowlist; told so politely.
    async fn tell_not_allowed(&self, speaker: &Speaker) -> Result<(), BotError> {
        tracing::info!(user_id = %speaker.user, "refused: the user is not on the allowlist");
        self.send(speaker, &speaker.texts().not_allowed(), None)
            .await
    }

    /// Counts one `action` by the speaker. Over the limit, the first refusal of the window
    /// tells the user when to try again and later ones are ignored quietly (answering each
    /// would be the very cost the limit saves); `true` means: do not go on.
    async fn over_limit(&self, speaker: &Speaker, action: Costly) -> Result<bool, BotError> {
        let limit = self.config.limits.of(action);
        let spent = limits::spend(
            self.pool(),
            speaker.user,
            action,
            limit,
            OffsetDateTime::now_utc(),
        )
        .await?;
        let Spent::Limited { retry_after, first } = spent else {
            return Ok(false);
        };
        tracing::info!(user_id = %speaker.user, ?action, ?retry_after, "per-user limit reached");
        metrics::counter!("keyledger_bot_limited_total", "action" => action.name()).increment(1);
        if first {
            let minutes = retry_after.as_secs().div_ceil(60);
            self.send(speaker, &speaker.texts().limit_reached(minutes), None)
                .await?;
        }
        Ok(true)
    }

    /// The subscription a button names, if it is the presser's and subscriptions are
    /// served; otherwise a polite refusal. The id in the button is only compared: the
    /// subscription acted on is always the one of the user who pressed.
    async fn owned_subscription(
        &self,
        speaker: &Speaker,
        query_id: &str,
        sub: SubRef,
    ) -> Result<Option<SubscriptionState>, BotError> {
        let texts = speaker.texts();
        if self.config.subscription_urls.is_none() {
            self.answer(query_id, Some(&texts.stale_button())).await?;
            return Ok(None);
        }
        if sub.subscription_id != SubscriptionId::for_user(speaker.user) {
            tracing::warn!(user_id = %speaker.user, subscription_id = %sub.subscription_id, "refused a button press for another user's subscription");
            self.answer(query_id, Some(&texts.not_your_key())).await?;
            self.send(speaker, &texts.not_your_key(), None).await?;
            return Ok(None);
        }
        let state = self
            .subscriptions
            .load(speaker.user)
            .await
            .map_err(|source| BotError::Subscription {
                user_id: speaker.user,
                source,
            })?;
        if state.user_id.is_none() {
            self.answer(query_id, Some(&texts.stale_button())).await?;
            return Ok(None);
        }
        Ok(Some(state))
    }

    /// A button shown for an earlier link: say so, and show the subscription as it is.
    async fn stale_subscription(&self, speaker: &Speaker, query_id: &str) -> Result<(), BotError> {
        self.answer(query_id, Some(&speaker.texts().stale_button()))
            .await?;
        self.show_subscription(speaker).await
    }

    /// A confirmed new link: checked against the presser and the generation the button was
    /// shown for, then the link and every active key of the user replaced, once.
    async fn confirmed_new_link(
        &self,
        speaker: &Speaker,
        query_id: &str,
        message_id: Option<i32>,
        sub: SubRef,
    ) -> Result<(), BotError> {
        let Some(state) = self.owned_subscription(speaker, query_id, sub).await? else {
            return Ok(());
        };
        if state.generation != sub.generation {
            return self.stale_subscription(speaker, query_id).await;
        }
        if self.refused_as_blocked(speaker, Some(query_id)).await? {
            return Ok(());
        }
        if self.over_limit(speaker, Costly::NewLink).await? {
            return self.answer(query_id, None).await;
        }
        let locations: Vec<LocationId> =
            self.config.locations.iter().map(|l| l.id.clone()).collect();
        // Named by the subscription and the generation the button was shown for: a second
        // press, or a retried update, is the same command.
        let id = command_id(&format!(
            "new-link/{}/{}",
            sub.subscription_id, sub.generation
        ));
        let replaced = self
            .subscriptions
            .replace_link(
                speaker.user,
                NEW_LINK_REASON,
                &locations,
                id,
                speaker.actor(),
            )
            .await
            .map_err(|source| BotError::Subscription {
                user_id: speaker.user,
                source,
            })?;
        tracing::info!(
            user_id = %speaker.user,
            generation = replaced.subscription.generation,
            rotated = replaced.rotated.len(),
            skipped = replaced.skipped.len(),
            "new subscription link from Telegram"
        );
        self.answer(query_id, None).await?;
        self.edit_or_send(speaker, message_id, &speaker.texts().new_link_done(), None)
            .await?;
        self.send_subscription(speaker, replaced.subscription.generation)
            .await
    }
}

/// Whether the key's last revocation was an administrator's or the service's: such a key
/// is not the user's to re-issue by pressing "My key" (docs/bot.md, "Limits"), unless an
/// administrator unblocked the user after it, which is their word that the user may ask again.
fn revoked_by_staff(events: &[RecordedEvent], access: &AccessStatus) -> bool {
    let Some(revocation) = events
        .iter()
        .rev()
        .find(|e| e.event_type == EventType::RevocationRequested.as_str())
    else {
        return false;
    };
    if access
        .unblocked_at
        .is_some_and(|unblocked| unblocked > revocation.position)
    {
        return false;
    }
    matches!(
        revocation.metadata["actor"]["kind"].as_str(),
        Some("admin" | "service")
    )
}

fn telegram_error(error: SendError) -> BotError {
    BotError::Telegram(error.to_string())
}

/// The command a message's text names (`/key`, `/key@our_bot`, `/KEY extra`), lower-cased.
fn command_of(text: &str) -> Option<String> {
    let word = text.strip_prefix('/')?.split_whitespace().next()?;
    let name = word.split('@').next()?;
    (!name.is_empty() && name.len() <= 32).then(|| name.to_ascii_lowercase())
}

/// A key's timeline, oldest first, the latest entries when it is long.
fn timeline(texts: &dyn Texts, location: &str, events: &[RecordedEvent]) -> String {
    let entries: Vec<String> = events
        .iter()
        .filter_map(|event| {
            let milestone = milestone(&event.event_type)?;
            Some(format!(
                "• {} — {}",
                texts.date(event.recorded_at),
                texts.milestone(milestone)
            ))
        })
        .collect();
    let mut lines = vec![texts.history_title(location)];
    if entries.len() > HISTORY_ENTRIES {
        lines.push("…".to_owned());
    }
    let skip = entries.len().saturating_sub(HISTORY_ENTRIES);
    lines.extend(entries.into_iter().skip(skip));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_recognised_in_their_telegram_forms() {
        assert_eq!(command_of("/key").as_deref(), Some("key"));
        assert_eq!(command_of("/KEY@keyledger_bot now").as_deref(), Some("key"));
        assert_eq!(command_of("/start payload").as_deref(), Some("start"));
        assert_eq!(command_of("key"), None);
        assert_eq!(command_of("/"), None);
        assert_eq!(command_of("/@bot"), None);
        assert_eq!(command_of(&format!("/{}", "x".repeat(100))), None);
    }

    #[test]
    fn command_ids_are_stable_and_distinct() {
        assert_eq!(command_id("rotate/a/3"), command_id("rotate/a/3"));
        assert_ne!(command_id("rotate/a/3"), command_id("rotate/a/4"));
    }
}
