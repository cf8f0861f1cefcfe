-- name: take_migration_lock
-- Serialise concurrent `grpod migrate` runs; released when the session ends.
SELECT pg_advisory_lock(hashtext('grpod.migrations'));

-- name: release_migration_lock
-- Let the next `grpod migrate` in.
SELECT pg_advisory_unlock(hashtext('grpod.migrations'));

-- name: vector_available
-- Whether the server has the pgvector extension installed (not yet created).
SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector');

-- name: vector_versions
-- The pgvector version the server would create, and the one the database has (NULL: none yet).
SELECT default_version, installed_version FROM pg_available_extensions WHERE name = 'vector';

-- name: create_migrations_table
-- The record of applied migrations.
CREATE TABLE IF NOT EXISTS grpod_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: fetch_applied_migrations
-- The migrations recorded as applied, oldest first.
SELECT version, name, checksum FROM grpod_migrations ORDER BY version;

-- name: record_migration
-- Record one migration as applied (in the same transaction as the migration).
INSERT INTO grpod_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: current_version
-- The newest applied migration (0 when none is).
SELECT coalesce(max(version), 0) FROM grpod_migrations;

-- name: migrations_table_exists
-- Whether `grpod migrate` has ever run on this database (read-only check).
SELECT to_regclass('grpod_migrations') IS NOT NULL;

-- name: backend_pid
-- The server process behind this connection: behind a pooler in transaction mode it changes
-- between transactions, and two clients can share one.
SELECT pg_backend_pid();
