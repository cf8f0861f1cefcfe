-- name: beat_heart
-- A process of the service says it is alive.
INSERT INTO heartbeats (role, hostname, pid, version, started_at, seen_at)
VALUES (%(role)s, %(hostname)s, %(pid)s, %(version)s, %(started_at)s, now())
ON CONFLICT (role, hostname) DO UPDATE
SET pid = EXCLUDED.pid, version = EXCLUDED.version,
    started_at = EXCLUDED.started_at, seen_at = now();

-- name: record_consumer_state
-- A worker's ingest consumer says what it is doing.
INSERT INTO heartbeats (role, hostname, pid, version, started_at, seen_at, state)
VALUES ('ingest', %(hostname)s, %(pid)s, %(version)s, now(), now(), %(state)s)
ON CONFLICT (role, hostname) DO UPDATE
SET started_at = CASE WHEN heartbeats.pid = EXCLUDED.pid THEN heartbeats.started_at ELSE now() END,
    pid = EXCLUDED.pid, version = EXCLUDED.version, seen_at = now(), state = EXCLUDED.state;

-- name: fetch_heartbeats
-- Every process that has said it is alive, with how long ago (and, for a consumer, its state).
SELECT role, hostname, pid, version, started_at, seen_at,
       extract(epoch FROM now() - seen_at)::float8 AS age_seconds, state
FROM heartbeats ORDER BY role, hostname;
