-- Distillation: one row per distillation of a group (keyed by its input), every LLM call in a
-- ledger, and the append-only library versions the distillations' operations go into.

-- A library version is immutable: the whole library (experiences with their provenance) as it
-- stands after the operations that made it. Version 0 is the empty library and has no row.
CREATE TABLE library_versions (
    domain              text        NOT NULL REFERENCES domains (name),
    version             integer     NOT NULL CHECK (version > 0),
    parent              integer     NOT NULL CHECK (parent >= 0 AND parent < version),
    experiences         jsonb       NOT NULL,  -- [{id, text, provenance: [...]}], by id
    operations          jsonb       NOT NULL,  -- the operations applied to the parent, with their sources
    notes               jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- operations dropped or repaired, and why
    next_experience_id  integer     NOT NULL CHECK (next_experience_id > 0),
    created_by          text        NOT NULL CHECK (created_by IN ('distillation', 'consolidation', 'operator')),
    reason              text        NOT NULL,
    distillation_ids    bigint[]    NOT NULL DEFAULT '{}',
    llm_call_ids        bigint[]    NOT NULL DEFAULT '{}',  -- the window's consolidation calls
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, version)
);

CREATE FUNCTION library_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'library versions are immutable: version % of domain % cannot be changed or deleted',
        OLD.version, OLD.domain;
END $$;

CREATE TRIGGER library_versions_immutable BEFORE UPDATE OR DELETE ON library_versions
    FOR EACH ROW EXECUTE FUNCTION library_versions_immutable();

-- One distillation per input (the group's traces with their rewards, and the parent version):
-- a retried or duplicated task finds the row and never makes a second version.
CREATE TABLE distillations (
    id               bigserial   PRIMARY KEY,
    domain           text        NOT NULL REFERENCES domains (name),
    group_id         bigint      REFERENCES groups (id) ON DELETE SET NULL,  -- re-embedding drops groups
    input_key        bytea       NOT NULL UNIQUE,
    parent_version   integer     NOT NULL CHECK (parent_version >= 0),
    samples          jsonb       NOT NULL,  -- [{trace_id, reward, critique, ground_truth}]
    settings         jsonb       NOT NULL,  -- the domain's learning settings it ran with (for a replay)
    status           text        NOT NULL CHECK (status IN ('running', 'failed', 'distilled', 'applied')),
    attempts         integer     NOT NULL DEFAULT 1,
    error            text,
    summaries        jsonb,
    candidates       jsonb,      -- the group advantage: new experiences proposed
    operations       jsonb,      -- the validated operations against the parent library
    notes            jsonb,      -- operations dropped or repaired, and why
    version          integer,    -- the library version its operations went into (NULL: nothing changed)
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    applied_at       timestamptz,
    next_attempt_at  timestamptz  -- a failed one is tried again by the sweep after this
);
CREATE INDEX distillations_domain ON distillations (domain, id);
CREATE INDEX distillations_waiting ON distillations (domain, finished_at) WHERE status = 'distilled';
CREATE INDEX distillations_failed ON distillations (next_attempt_at) WHERE status = 'failed';
CREATE INDEX distillations_group ON distillations (group_id);

-- Every LLM call: the cost ledger and the recording that replays a distillation.
CREATE TABLE llm_calls (
    id               bigserial        PRIMARY KEY,
    domain           text             NOT NULL REFERENCES domains (name),
    distillation_id  bigint           REFERENCES distillations (id),  -- NULL for a window's consolidation
    purpose          text             NOT NULL CHECK (purpose IN ('summary', 'advantage', 'operations', 'consolidation')),
    model            text             NOT NULL,
    prompt_hash      bytea            NOT NULL,
    request          jsonb            NOT NULL,
    response         text             NOT NULL,
    error            text,            -- why the answer could not be used, when it could not
    tokens_in        integer          NOT NULL,
    tokens_out       integer          NOT NULL,
    latency_seconds  double precision NOT NULL,
    created_at       timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_distillation ON llm_calls (distillation_id, id);
CREATE INDEX llm_calls_domain ON llm_calls (domain, created_at);

ALTER TABLE traces ADD CONSTRAINT traces_used_by_distillation
    FOREIGN KEY (used_by_distillation) REFERENCES distillations (id);
