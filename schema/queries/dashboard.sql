-- name: overview
-- Per domain (of these, or all when NULL): events received in the last window seconds (traces,
-- and rewards of its traces), traces still awaiting a reward (not expired), rejected events, ready groups,
-- the labels, the pin and the freeze.
SELECT d.name,
       (SELECT count(*) FROM traces t
         WHERE t.domain = d.name AND t.received_at > now() - make_interval(secs => %(window)s))
     + (SELECT count(*) FROM rewards r JOIN traces t ON t.trace_id = r.trace_id
         WHERE t.domain = d.name AND r.received_at > now() - make_interval(secs => %(window)s)) AS recent_events,
       (SELECT count(*) FROM traces_awaiting_reward a WHERE a.domain = d.name AND a.expired_at IS NULL)
           AS awaiting_reward,
       (SELECT count(*) FROM rejected_events e WHERE e.domain = d.name) AS rejected,
       (SELECT count(*) FROM groups g WHERE g.domain = d.name AND g.ready_at IS NOT NULL) AS ready_groups,
       (SELECT version FROM library_labels l WHERE l.domain = d.name AND l.label = 'production') AS production,
       (SELECT version FROM library_labels l WHERE l.domain = d.name AND l.label = 'candidate') AS candidate,
       d.pinned_version, d.frozen_at IS NOT NULL AS frozen
FROM domains d
WHERE %(domains)s::text[] IS NULL OR d.name = ANY(%(domains)s::text[])
ORDER BY d.name;

-- name: unattributed_rejected
-- Rejected events that named no domain (unreadable, or a reward whose trace never came).
SELECT count(*) FROM rejected_events WHERE domain IS NULL;

-- name: distillations
-- A domain's newest distillations, with the calls, tokens and notes of each.
SELECT d.id, d.group_id, d.status, d.attempts, d.error, d.parent_version, d.version, d.created_at,
       jsonb_array_length(d.samples) AS samples, coalesce(jsonb_array_length(d.operations), 0) AS operations,
       coalesce(d.notes, '[]'::jsonb) AS notes,
       count(c.id) AS calls, coalesce(sum(c.tokens_in), 0) AS tokens_in, coalesce(sum(c.tokens_out), 0) AS tokens_out
FROM distillations d LEFT JOIN llm_calls c ON c.distillation_id = d.id
WHERE d.domain = %(domain)s
GROUP BY d.id
ORDER BY d.id DESC
LIMIT %(limit)s;

-- name: distillation
-- One distillation of a domain, whole.
SELECT id, group_id, status, attempts, error, parent_version, version, created_at, samples, summaries,
       new_experiences, operations, notes
FROM distillations WHERE id = %(id)s AND domain = %(domain)s;

-- name: distillation_calls
-- A distillation's LLM calls, in order.
SELECT id, purpose, model, tokens_in, tokens_out, latency_seconds, error, created_at
FROM llm_calls WHERE distillation_id = %(id)s ORDER BY id;

-- name: trace
-- One trace, with its rewards.
SELECT t.trace_id, t.domain, t.query, t.trajectory, t.answer, t.library_version, t.group_id, t.created_at,
       t.received_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object('source', r.source, 'value', r.value,
                                                     'critique', r.critique, 'ground_truth', r.ground_truth)
                                  ORDER BY r.source)
                 FROM rewards r WHERE r.trace_id = t.trace_id), '[]'::jsonb) AS rewards
FROM traces t WHERE t.trace_id = %(trace_id)s;

-- name: rejected_domain
-- The domain a rejected event named (NULL when none), to check a replay's permission.
SELECT domain FROM rejected_events WHERE id = %(id)s;
