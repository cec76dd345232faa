-- The Telegram bot's own state. None of it is a source of truth about keys (that is the
-- log); it is what the bot needs to talk to people: where to reach them, which updates it
-- already handled, and which notifications it owes or has sent.

-- Where to reach a user and in which language, from their latest update.
CREATE TABLE bot_users (
    user_id    bigint      PRIMARY KEY,
    chat_id    bigint      NOT NULL,
    language   text        NOT NULL CHECK (language IN ('en', 'ru')),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Telegram update ids already handled: Telegram delivers an update again until the bot
-- confirms it, and a retried update must not act twice. Old rows are pruned.
CREATE TABLE bot_updates (
    update_id    bigint      PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Notifications owed to users, written by the notify consumer in the same transaction as
-- its progress, and sent by the bot's sender. The id names what the notification is about
-- (`<key_id>/<version>` for an event, `<key_id>/warn/<expiry>` for an expiry warning), so
-- an event delivered twice owes one notification.
CREATE TABLE bot_notifications (
    id          text        PRIMARY KEY,
    key_id      uuid        NOT NULL,
    user_id     bigint      NOT NULL,
    chat_id     bigint      NOT NULL,
    language    text        NOT NULL,
    kind        text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- not tried again before this (Telegram's retry_after, or backoff after an error)
    not_before  timestamptz NOT NULL DEFAULT now(),
    -- a sender claimed it until then; another sender may take it after
    leased_until timestamptz,
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    -- set once done: 'sent', 'superseded' (a newer key made it stale), 'undeliverable'
    outcome     text,
    done_at     timestamptz
);
CREATE INDEX bot_notifications_pending ON bot_notifications (not_before) WHERE outcome IS NULL;
