-- Ingestion: domains, traces, rewards (which may come before their trace),
-- and every rejected event with its reason.

CREATE TABLE domains (
    name        text        PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    settings    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- trace_id is the idempotency key: a trace is stored once, never overwritten.
CREATE TABLE traces (
    trace_id         text        PRIMARY KEY,
    domain           text        NOT NULL REFERENCES domains (name),
    query            text        NOT NULL,
    trajectory       jsonb       NOT NULL,
    answer           text        NOT NULL,
    library_version  integer,
    metadata         jsonb,
    created_at       timestamptz NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    content_hash     bytea       NOT NULL
);
CREATE INDEX traces_domain_received ON traces (domain, received_at);
CREATE INDEX traces_received ON traces (received_at);

-- One reward per (trace, source). No foreign key: a reward may arrive first
-- and wait for its trace; one that waits too long moves to rejected_events.
CREATE TABLE rewards (
    trace_id      text             NOT NULL,
    source        text             NOT NULL,
    value         double precision NOT NULL CHECK (value = value AND value < 'Infinity' AND value > '-Infinity'),
    critique      text,
    ground_truth  text,
    created_at    timestamptz      NOT NULL,
    received_at   timestamptz      NOT NULL DEFAULT now(),
    content_hash  bytea            NOT NULL,
    PRIMARY KEY (trace_id, source)
);
CREATE INDEX rewards_received ON rewards (received_at);

CREATE TABLE rejected_events (
    id                 bigserial   PRIMARY KEY,
    reason             text        NOT NULL,
    detail             text        NOT NULL,
    origin             text        NOT NULL,
    trace_id           text,
    payload            bytea       NOT NULL,
    payload_size       integer     NOT NULL,
    payload_truncated  boolean     NOT NULL,
    received_at        timestamptz NOT NULL DEFAULT now(),
    replayed_at        timestamptz,
    replay_outcome     text
);
CREATE INDEX rejected_events_reason ON rejected_events (reason);
