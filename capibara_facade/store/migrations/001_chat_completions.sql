-- Stored chat completions, one row each, keyed by their caller and id (a caller sees only its own).
-- Plain SQL that SQLite and Postgres both run. JSON is kept as text: the facade reads it whole.
CREATE TABLE chat_completions (
    caller TEXT NOT NULL,
    id TEXT NOT NULL,
    model TEXT NOT NULL,
    created BIGINT NOT NULL,
    -- microseconds since the epoch when stored: the lists' order (upstreams' `created` may repeat)
    stored_at BIGINT NOT NULL,
    -- seconds since the epoch; NULL: kept until deleted
    expires_at BIGINT,
    completion TEXT NOT NULL,
    messages TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (caller, id)
);
CREATE INDEX chat_completions_in_order ON chat_completions (caller, stored_at, id);
CREATE INDEX chat_completions_expiring ON chat_completions (expires_at);
-- One row per metadata pair, so `metadata[key]=value` filters are plain joins in either database.
CREATE TABLE chat_completion_metadata (
    caller TEXT NOT NULL,
    completion_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (caller, completion_id, key)
);
CREATE INDEX chat_completion_metadata_by_pair ON chat_completion_metadata (caller, key, value);
