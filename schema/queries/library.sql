-- name: current_version
-- The version a new distillation builds on: the newest (0, the empty library, when there is none).
SELECT coalesce(max(version), 0) FROM library_versions WHERE domain = %(domain)s;

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
