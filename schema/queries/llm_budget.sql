-- name: reserve
-- Count one request and its estimated tokens in the current window, if the limits allow it (the
-- first request of a window always passes, however many tokens it needs). No row: wait.
INSERT INTO llm_budget AS b (endpoint, window_start, requests, tokens)
VALUES (%(endpoint)s, date_bin(make_interval(secs => %(window)s), now(), 'epoch'), 1, %(tokens)s)
ON CONFLICT (endpoint, window_start) DO UPDATE
    SET requests = b.requests + 1, tokens = b.tokens + excluded.tokens
    WHERE (%(max_requests)s::integer IS NULL OR b.requests + 1 <= %(max_requests)s::integer)
      AND (%(max_tokens)s::bigint IS NULL OR b.tokens + excluded.tokens <= %(max_tokens)s::bigint)
RETURNING window_start, requests;

-- name: until_next_window
-- Seconds until the next window starts.
SELECT extract(epoch FROM date_bin(make_interval(secs => %(window)s), now(), 'epoch')
                          + make_interval(secs => %(window)s) - now());

-- name: settle
-- Replace a request's estimated tokens with what it used.
UPDATE llm_budget SET tokens = greatest(0, tokens + %(delta)s)
WHERE endpoint = %(endpoint)s AND window_start = %(window_start)s;

-- name: prune
-- Windows older than an hour are of no more use.
DELETE FROM llm_budget WHERE endpoint = %(endpoint)s AND window_start < now() - interval '1 hour';
