-- Per-user limits on what costs work (docs/bot.md, "Limits"): how often each user did each
-- costly thing in the current window. Counters, not history: one row per user, action and
-- window, old windows pruned.
CREATE TABLE IF NOT EXISTS user_action_counts (
    user_id      bigint      NOT NULL,
    action       text        NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer     NOT NULL,
    PRIMARY KEY (user_id, action, window_start)
);
CREATE INDEX IF NOT EXISTS user_action_counts_by_window ON user_action_counts (window_start);
