-- The dashboard counts rejected events per domain: a rejected event keeps the domain it named
-- (a trace's own, a reward's from its stored trace), NULL when it named none that could be read.
ALTER TABLE rejected_events ADD COLUMN domain text;
UPDATE rejected_events r SET domain = t.domain FROM traces t WHERE t.trace_id = r.trace_id;
CREATE INDEX rejected_events_domain ON rejected_events (domain, id);
