-- name: beat_heart
-- A process of the service says it is alive.
INSERT INTO heartbeats (role, hostname, pid, version, started_at, seen_at)
VALUES (%(role)s, %(hostname)s, %(pid)s, %(version)s, %(started_at)s, now())
ON CONFLICT (role, hostname) DO UPDATE
SET pid = EXCLUDED.pid, version = EXCLUDED.version,
    started_at = EXCLUDED.started_at, seen_at = now();

-- name: fetch_heartbeats
-- Every process that has said it is alive, with how long ago.
SELECT role, hostname, pid, version, started_at, seen_at,
       extract(epoch FROM now() - seen_at)::float8 AS age_seconds
FROM heartbeats ORDER BY role, hostname;
