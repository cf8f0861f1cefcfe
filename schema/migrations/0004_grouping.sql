-- Grouping: each trace's query embedding, groups of similar queries per domain, and which
-- embedding model a domain's vectors come from (a domain never mixes two models).

ALTER TABLE domains
    ADD COLUMN embedding_model     text,
    ADD COLUMN embedding_dimension integer CHECK (embedding_dimension > 0);

-- The centroid has no fixed dimension in the column (domains may use different models); each
-- dimension in use gets a partial HNSW index on centroid::vector(N), created by the grouping stage.
CREATE TABLE groups (
    id          bigserial   PRIMARY KEY,
    domain      text        NOT NULL REFERENCES domains (name),
    dimension   integer     NOT NULL CHECK (dimension > 0),
    centroid    vector      NOT NULL,
    size        integer     NOT NULL DEFAULT 1 CHECK (size > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    ready_at    timestamptz -- set once, when the group first becomes ready for distillation
);
CREATE INDEX groups_domain ON groups (domain);

ALTER TABLE traces
    ADD COLUMN embedding  vector,
    ADD COLUMN group_id   bigint REFERENCES groups (id),
    ADD COLUMN grouped_at timestamptz,
    ADD COLUMN used_by_distillation bigint;  -- set by the distillation that consumed the trace
CREATE INDEX traces_ungrouped ON traces (domain, received_at) WHERE group_id IS NULL;
CREATE INDEX traces_group ON traces (group_id);
CREATE INDEX rewards_trace ON rewards (trace_id);
