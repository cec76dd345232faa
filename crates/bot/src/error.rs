//! [`BotError`]: what can stop the bot answering an update, or starting. Bot API failures are
//! carried as text already scrubbed of the token rather than as the `reqwest` error, whose
//! message holds the request URL and with it the token.

use domain::{KeyId, UserId};
use eventstore::{ExecuteError, StoreError};

use crate::qr::QrError;

/// What can go wrong while the bot answers an update or starts.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("cannot build the HTTP client for the Bot API: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot listen for the webhook on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    #[error("command on key {key_id}: {source}")]
    Execute {
        key_id: KeyId,
        #[source]
        source: ExecuteError,
    },
    #[error("subscription of user {user_id}: {source}")]
    Subscription {
        user_id: UserId,
        #[source]
        source: ExecuteError,
    },
    /// Scrubbed of the token.
    #[error("Bot API: {0}")]
    Telegram(String),
    #[error(transparent)]
    Qr(#[from] QrError),
}

impl BotError {
    /// Whether the failure is on our side (the database), so handling the update again
    /// later may succeed; a refusal by Telegram or the domain would only repeat.
    pub fn is_ours(&self) -> bool {
        matches!(self, BotError::Database(_) | BotError::Store(_))
    }
}
