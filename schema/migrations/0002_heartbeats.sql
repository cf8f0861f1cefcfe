-- Liveness of the service's processes: each worker and beat writes its row
-- on a schedule, so `grpod status` can say what is running, and where.
CREATE TABLE heartbeats (
    role        text        NOT NULL CHECK (role IN ('worker', 'beat')),
    hostname    text        NOT NULL,
    pid         integer     NOT NULL,
    version     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, hostname)
);
