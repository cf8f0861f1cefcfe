-- name: trace_domain
-- The domain of a stored trace (a reward sent over HTTP must be for a domain its token reaches).
SELECT domain FROM traces WHERE trace_id = %(trace_id)s;
