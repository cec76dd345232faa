//! The Bot API calls the bot makes, through teloxide, with Telegram's rate limits honoured
//! and the token kept out of every error.

use std::fmt;
use std::time::Duration;

use teloxide::payloads::{
    AnswerCallbackQuerySetters, EditMessageTextSetters, GetUpdatesSetters, SendMessageSetters,
    SendPhotoSetters, SetMyCommandsSetters, SetWebhookSetters,
};
use teloxide::requests::Requester;
use teloxide::types::{
    AllowedUpdate, BotCommand, CallbackQueryId, ChatId, InlineKeyboardButton, InlineKeyboardMarkup,
    InputFile, MessageId, ParseMode, Update,
};
use teloxide::{ApiError, Bot, RequestError};
use url::Url;

use crate::callback::Action;
use domain::Secret;

/// One inline button: its label, and what pressing it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Button {
    /// Comes back to the bot as callback data.
    Press(String, Action),
    /// Opens an `http(s)` page in the user's browser; Telegram opens no other scheme.
    Open(String, Url),
}

impl Button {
    pub fn press(label: &str, action: Action) -> Self {
        Self::Press(label.to_owned(), action)
    }
}

/// Rows of inline buttons.
pub type Keyboard = Vec<Vec<Button>>;

/// Why a call did not go through.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Telegram's flood control: try again after this long.
    #[error("rate limited by Telegram for {0:?}")]
    RetryAfter(Duration),
    /// The user cannot be reached (blocked the bot, deleted their account, no such chat):
    /// trying again will not help.
    #[error("the user cannot be reached: {0}")]
    Unreachable(String),
    /// The message was already as asked (editing to the same text).
    #[error("message not modified")]
    NotModified,
    /// Anything else: the network, Telegram itself. Scrubbed of the token.
    #[error("{0}")]
    Other(String),
}

/// The bot's connection to the Bot API. `Debug` never shows the token (teloxide's `Bot`
/// would).
#[derive(Clone)]
pub struct Telegram {
    bot: Bot,
    token: Secret,
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("api_url", &self.bot.api_url().as_str())
            .finish_non_exhaustive()
    }
}

/// A redelivered 429 is waited out at most this many times in a conversation before the
/// reply is given up (the user can press again); notifications are never given up for it.
const CONVERSATION_RETRIES: u32 = 5;
/// The update kinds the bot asks for, by either door.
const ALLOWED_UPDATES: [AllowedUpdate; 3] = [
    AllowedUpdate::Message,
    AllowedUpdate::EditedMessage,
    AllowedUpdate::CallbackQuery,
];

/// Longest wait for one rate limit inside a conversation.
const MAX_CONVERSATION_WAIT: Duration = Duration::from_secs(60);

impl Telegram {
    /// `request_timeout` must exceed the long-polling timeout of `getUpdates`.
    pub fn new(
        token: &Secret,
        api_url: &Url,
        request_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(request_timeout)
            .build()?;
        let bot = Bot::with_client(token.expose(), client).set_api_url(api_url.clone());
        Ok(Self {
            bot,
            token: token.clone(),
        })
    }

    fn classify(&self, error: RequestError) -> SendError {
        match error {
            RequestError::RetryAfter(seconds) => SendError::RetryAfter(seconds.duration()),
            RequestError::Api(
                ApiError::BotBlocked
                | ApiError::ChatNotFound
                | ApiError::UserDeactivated
                | ApiError::BotKicked
                | ApiError::CantInitiateConversation
                | ApiError::CantTalkWithBots,
            ) => SendError::Unreachable(error.to_string()),
            RequestError::Api(ApiError::MessageNotModified) => SendError::NotModified,
            other => SendError::Other(self.token.scrub(&other.to_string())),
        }
    }

    pub async fn updates(&self, offset: i32, timeout: Duration) -> Result<Vec<Update>, SendError> {
        self.bot
            .get_updates()
            .offset(offset)
            .timeout(timeout.as_secs().min(u64::from(u32::MAX)) as u32)
            .allowed_updates(ALLOWED_UPDATES)
            .await
            .map_err(|e| self.classify(e))
    }

    /// Asks Telegram to POST updates to `url` with `secret` in the
    /// `X-Telegram-Bot-Api-Secret-Token` header.
    pub async fn set_webhook(&self, url: &Url, secret: &Secret) -> Result<(), SendError> {
        self.bot
            .set_webhook(url.clone())
            .secret_token(secret.expose())
            .allowed_updates(ALLOWED_UPDATES)
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }

    /// Turns a webhook off, so `getUpdates` answers (Telegram refuses it while one is set).
    pub async fn delete_webhook(&self) -> Result<(), SendError> {
        self.bot
            .delete_webhook()
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }

    pub async fn send_text(
        &self,
        chat: i64,
        html: &str,
        keyboard: Option<&Keyboard>,
    ) -> Result<i32, SendError> {
        let mut request = self
            .bot
            .send_message(ChatId(chat), html)
            .parse_mode(ParseMode::Html);
        if let Some(keyboard) = keyboard {
            request = request.reply_markup(markup(keyboard));
        }
        request.await.map(|m| m.id.0).map_err(|e| self.classify(e))
    }

    pub async fn send_photo(
        &self,
        chat: i64,
        png: Vec<u8>,
        caption: &str,
        keyboard: Option<&Keyboard>,
    ) -> Result<i32, SendError> {
        let photo = InputFile::memory(png).file_name("key.png");
        let mut request = self
            .bot
            .send_photo(ChatId(chat), photo)
            .caption(caption)
            .parse_mode(ParseMode::Html);
        if let Some(keyboard) = keyboard {
            request = request.reply_markup(markup(keyboard));
        }
        request.await.map(|m| m.id.0).map_err(|e| self.classify(e))
    }

    pub async fn edit_text(
        &self,
        chat: i64,
        message_id: i32,
        html: &str,
        keyboard: Option<&Keyboard>,
    ) -> Result<(), SendError> {
        let mut request = self
            .bot
            .edit_message_text(ChatId(chat), MessageId(message_id), html)
            .parse_mode(ParseMode::Html);
        if let Some(keyboard) = keyboard {
            request = request.reply_markup(markup(keyboard));
        }
        match request.await.map_err(|e| self.classify(e)) {
            Ok(_) | Err(SendError::NotModified) => Ok(()),
            Err(other) => Err(other),
        }
    }

    pub async fn answer_callback(&self, id: &str, text: Option<&str>) -> Result<(), SendError> {
        let mut request = self
            .bot
            .answer_callback_query(CallbackQueryId(id.to_owned()));
        if let Some(text) = text {
            request = request.text(text);
        }
        request.await.map(|_| ()).map_err(|e| self.classify(e))
    }

    /// Registers the command menu for `language` (`None`: the default for every other).
    pub async fn set_commands(
        &self,
        commands: Vec<(&str, &str)>,
        language: Option<&str>,
    ) -> Result<(), SendError> {
        let commands: Vec<BotCommand> = commands
            .into_iter()
            .map(|(command, description)| BotCommand::new(command, description))
            .collect();
        let mut request = self.bot.set_my_commands(commands);
        if let Some(language) = language {
            request = request.language_code(language);
        }
        request.await.map(|_| ()).map_err(|e| self.classify(e))
    }
}

fn markup(keyboard: &Keyboard) -> InlineKeyboardMarkup {
    InlineKeyboardMarkup::new(keyboard.iter().map(|row| {
        row.iter()
            .map(|button| match button {
                Button::Press(label, action) => {
                    InlineKeyboardButton::callback(label.clone(), action.encode())
                }
                Button::Open(label, url) => InlineKeyboardButton::url(label.clone(), url.clone()),
            })
            .collect::<Vec<_>>()
    }))
}

/// Runs `call` again after each rate limit Telegram answers with, a bounded number of
/// times: a conversation reply is worth a short wait, not an endless one.
pub async fn with_rate_limit<T, F, Fut>(mut call: F) -> Result<T, SendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SendError>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Err(SendError::RetryAfter(wait)) if tries < CONVERSATION_RETRIES => {
                tries += 1;
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "Telegram asked us to slow down; waiting"
                );
                tokio::time::sleep(wait.min(MAX_CONVERSATION_WAIT)).await;
            }
            other => return other,
        }
    }
}
