-- Lookups the operators' console makes on every page view, index-backed so they stay fast
-- however long the log grows. A key found by its current client UUID:
CREATE INDEX IF NOT EXISTS key_views_client_uuid ON key_views (client_uuid);
-- Subscription fetches of the last hour and day, counted on the console's locations page.
CREATE INDEX IF NOT EXISTS subscription_fetches_by_time ON subscription_fetches (fetched_at);
