-- The W3C trace context of the handling that owed a notification (docs/operations.md,
-- "Traces"), so the message sent to the user joins the trace of the change it announces.
-- Null when tracing is off or the notification was owed without one (expiry warnings).
ALTER TABLE bot_notifications ADD COLUMN IF NOT EXISTS traceparent text;
