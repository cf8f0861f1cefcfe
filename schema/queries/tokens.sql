-- name: insert_token
-- A new token (its hash); the partial unique index refuses a second active token of one name.
INSERT INTO api_tokens (name, token_hash, domains, scopes) VALUES (%(name)s, %(token_hash)s, %(domains)s, %(scopes)s)
RETURNING name, domains, scopes, created_at, last_used_at, revoked_at;

-- name: active_token
-- The active token with this hash, marking it used.
UPDATE api_tokens SET last_used_at = now() WHERE token_hash = %(token_hash)s AND revoked_at IS NULL
RETURNING name, domains, scopes, created_at, last_used_at, revoked_at;

-- name: tokens
-- Every token, newest first (never its hash).
SELECT name, domains, scopes, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id DESC;

-- name: revoke_token
-- Revoke the active token of this name.
UPDATE api_tokens SET revoked_at = now() WHERE name = %(name)s AND revoked_at IS NULL RETURNING name;
