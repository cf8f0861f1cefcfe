-- The HTTP API's bearer tokens: only a token's SHA-256 is stored, never the token. A token reaches
-- its domains (NULL: every domain) with its scopes; a revoked one is kept for the audit trail, and
-- its name may be given to a new token.
CREATE TABLE api_tokens (
    id          bigserial   PRIMARY KEY,
    name        text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$'),
    token_hash  bytea       NOT NULL UNIQUE,
    domains     text[],     -- NULL: every domain
    scopes      text[]      NOT NULL CHECK (scopes <@ ARRAY['publish', 'read', 'operate'] AND cardinality(scopes) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE revoked_at IS NULL;
