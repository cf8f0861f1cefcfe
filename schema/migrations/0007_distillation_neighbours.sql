-- The group advantage's output is named as everywhere else (new experiences; "candidate" is only a
-- library label), and, per new experience, the nearest experience of the parent library and its
-- cosine distance, as the triage saw them: one with none close is added without an operations
-- call, and a replay reads these instead of embedding again.
ALTER TABLE distillations RENAME COLUMN candidates TO new_experiences;
ALTER TABLE distillations ADD COLUMN neighbours jsonb;  -- [{text, id, distance}]; NULL before 0007
