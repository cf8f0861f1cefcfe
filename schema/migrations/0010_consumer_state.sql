-- Health: a worker's ingest consumer records what it is doing, not just that its process exists.
ALTER TABLE heartbeats DROP CONSTRAINT heartbeats_role_check;
ALTER TABLE heartbeats ADD CONSTRAINT heartbeats_role_check CHECK (role IN ('worker', 'beat', 'ingest'));
ALTER TABLE heartbeats ADD COLUMN state text;  -- for 'ingest': consuming, waiting_for_database, ...
