-- name: insert_token
-- A new token (its hash); the partial unique index refuses a second active token of one name.
INSERT INTO api_tokens (name, token_hash, domains, scopes) VALUES (%(name)s, %(token_hash)s, %(domains)s, %(scopes)s)
RETURNING name, domains, scopes, created_at, last_used_at, revoked_at;

-- name: active_token
-- The active token with this hash. Its last use is written at most once a minute: every agent
-- request authenticates, and a write each would put a row update on the hot path.
WITH found AS (
    SELECT id, name, domains, scopes, created_at, last_used_at, revoked_at FROM api_tokens
    WHERE token_hash = %(token_hash)s AND revoked_at IS NULL
), touched AS (
    UPDATE api_tokens t SET last_used_at = now() FROM found
    WHERE t.id = found.id AND (found.last_used_at IS NULL OR found.last_used_at < now() - interval '1 minute')
)
SELECT name, domains, scopes, created_at, last_used_at, revoked_at FROM found;

-- name: tokens
-- Every token, newest first (never its hash).
SELECT name, domains, scopes, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id DESC;

-- name: revoke_token
-- Revoke the active token of this name.
UPDATE api_tokens SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING name;
