-- Which candidates were new: per candidate, the nearest experience of the parent library and its
-- cosine distance, as the triage saw them. A candidate with none close is added without an
-- operations call; a replay reads these instead of embedding again.
ALTER TABLE distillations ADD COLUMN neighbours jsonb;  -- [{candidate, id, distance}]; NULL before 0007
