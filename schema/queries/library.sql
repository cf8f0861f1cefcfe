-- name: current_version
-- The version new learning builds on: the candidate when there is one, else production, else 0
-- (the empty library). After a rollback that is the version production was rolled back to.
SELECT coalesce(
    (SELECT version FROM library_labels WHERE domain = %(domain)s AND label = 'candidate'),
    (SELECT version FROM library_labels WHERE domain = %(domain)s AND label = 'production'),
    0);

-- name: version_experiences
-- One version's experiences (with provenance) and the next experience id it leaves.
SELECT experiences, next_experience_id FROM library_versions WHERE domain = %(domain)s AND version = %(version)s;

-- name: next_experience_id
-- The first experience id never used in the domain, in any version (ids are never reused).
SELECT coalesce(max(next_experience_id), 1) FROM library_versions WHERE domain = %(domain)s;

-- name: insert_version
-- A new immutable version; the primary key refuses a second one with the same number.
INSERT INTO library_versions (domain, version, parent, experiences, operations, notes, next_experience_id,
                              created_by, reason, distillation_ids, llm_call_ids)
VALUES (%(domain)s, %(version)s, %(parent)s, %(experiences)s, %(operations)s, %(notes)s, %(next_experience_id)s,
        %(created_by)s, %(reason)s, %(distillation_ids)s, %(llm_call_ids)s);

-- name: lock_domain_update
-- One domain update (the writer of library versions) per domain at a time, held for the session:
-- a process that dies releases it with its connection.
SELECT pg_try_advisory_lock(hashtext('grpod.library'), hashtext(%(domain)s));

-- name: unlock_domain_update
SELECT pg_advisory_unlock(hashtext('grpod.library'), hashtext(%(domain)s));

-- name: versions
-- A domain's versions, newest first.
SELECT version, parent, created_by, reason, jsonb_array_length(experiences), distillation_ids, created_at
FROM library_versions WHERE domain = %(domain)s ORDER BY version DESC LIMIT %(limit)s;

-- name: newest_version
-- The highest version number the domain has (a new version takes the next one).
SELECT coalesce(max(version), 0) FROM library_versions WHERE domain = %(domain)s;

-- name: lock_domain_update_now
-- The domain's update lock for one transaction, waiting for it (operator actions and the judge).
SELECT pg_advisory_xact_lock(hashtext('grpod.library'), hashtext(%(domain)s));

-- name: labels
-- A domain's labels and the versions they point at.
SELECT label, version FROM library_labels WHERE domain = %(domain)s ORDER BY label;

-- name: set_label
-- Point a label at a version.
INSERT INTO library_labels (domain, label, version) VALUES (%(domain)s, %(label)s, %(version)s)
ON CONFLICT (domain, label) DO UPDATE SET version = excluded.version, moved_at = now();

-- name: drop_label
-- A label that points nowhere any more (a discarded candidate).
DELETE FROM library_labels WHERE domain = %(domain)s AND label = %(label)s;

-- name: record_event
-- One entry of the domain's audit log.
INSERT INTO library_events (domain, action, label, from_version, to_version, actor, reason, statistics)
VALUES (%(domain)s, %(action)s, %(label)s, %(from_version)s, %(to_version)s, %(actor)s, %(reason)s, %(statistics)s)
RETURNING id, created_at;

-- name: notify
-- Tell listening agents a label moved (delivered when the transaction commits).
SELECT pg_notify('grpod_library', %(payload)s);

-- name: library_state
-- A domain's pin and freeze, and its settings.
SELECT pinned_version, frozen_at, settings FROM domains WHERE name = %(domain)s;

-- name: set_pin
UPDATE domains SET pinned_version = %(version)s WHERE name = %(domain)s;

-- name: set_frozen
UPDATE domains SET frozen_at = CASE WHEN %(frozen)s THEN now() END WHERE name = %(domain)s;

-- name: version_exists
SELECT 1 FROM library_versions WHERE domain = %(domain)s AND version = %(version)s;

-- name: version_rows
-- A domain's versions with everything history shows, newest first.
SELECT version, parent, created_at, created_by, reason, operations, notes, distillation_ids,
       jsonb_array_length(experiences)
FROM library_versions WHERE domain = %(domain)s ORDER BY version DESC LIMIT %(limit)s;

-- name: events
-- A domain's audit log, newest first.
SELECT id, action, label, from_version, to_version, actor, reason, statistics, created_at
FROM library_events WHERE domain = %(domain)s ORDER BY id DESC LIMIT %(limit)s;

-- name: production_arrival
-- The latest event that moved production to its current version (its predecessor is from_version).
SELECT action, from_version FROM library_events
WHERE domain = %(domain)s AND label = 'production' AND to_version = %(version)s
ORDER BY id DESC LIMIT 1;

-- name: version_rewards
-- The rewarded traces that ran with these versions (version 0: the empty library, or none named),
-- with each source's reward and when it arrived.
SELECT coalesce(t.library_version, 0), array_agg(r.source ORDER BY r.source), array_agg(r.value ORDER BY r.source),
       array_agg(extract(epoch FROM r.received_at)::float8 ORDER BY r.source)
FROM traces t JOIN rewards r ON r.trace_id = t.trace_id
WHERE t.domain = %(domain)s AND coalesce(t.library_version, 0) = ANY(%(versions)s::integer[])
GROUP BY t.trace_id, t.library_version;

-- name: domains_to_judge
-- Domains with a candidate, or with a production version that may need rolling back.
SELECT DISTINCT domain FROM library_labels;

-- name: serve
-- What an agent fetches: the version a label points at, and its experiences.
SELECT v.version, v.experiences FROM library_labels l
JOIN library_versions v ON v.domain = l.domain AND v.version = l.version
WHERE l.domain = %(domain)s AND l.label = %(label)s;
