-- Answers the HTTP API gave to POSTs carrying an Idempotency-Key header, so that a client
-- retrying after a lost answer gets the same answer instead of a second command.
CREATE TABLE api_idempotency (
    -- The caller's role and the header value: two callers never share an answer.
    caller        text        NOT NULL,
    key           text        NOT NULL,
    -- Method, path and a SHA-256 of the body: reusing a key for another request is refused.
    request_hash  text        NOT NULL,
    status        smallint    NOT NULL,
    body          jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
