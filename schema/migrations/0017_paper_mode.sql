-- Paper mode: `grpod train` learns from a labelled set with the paper's protocol (G rollouts of
-- each question, one group per question), and `grpod eval` measures a library on one.

-- A training run: its dataset and settings (the same ones resume it), and the steps it reached.
CREATE TABLE training_runs (
    id           bigserial   PRIMARY KEY,
    domain       text        NOT NULL REFERENCES domains (name),
    run_key      bytea       NOT NULL,  -- the domain, the dataset's content and the settings
    dataset      text        NOT NULL,  -- the file it was read from, for people
    settings     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX training_runs_unfinished ON training_runs (run_key) WHERE finished_at IS NULL;

-- One batch of one epoch: the library its rollouts ran with, and what it published.
CREATE TABLE training_steps (
    run_id          bigint      NOT NULL REFERENCES training_runs (id),
    step            integer     NOT NULL CHECK (step > 0),
    parent_version  integer     NOT NULL CHECK (parent_version >= 0),
    report          jsonb,      -- the step's table row, once it is done
    finished_at     timestamptz,
    PRIMARY KEY (run_id, step)
);

-- A run's rollouts are stored as traces of its domain, grouped by their question: the grouping
-- stage leaves them alone.
ALTER TABLE traces ADD COLUMN training_run bigint REFERENCES training_runs (id);
DROP INDEX traces_ungrouped;
CREATE INDEX traces_ungrouped ON traces (domain, received_at) WHERE group_id IS NULL AND training_run IS NULL;

-- An evaluation: both arms side by side, as `grpod eval --json` printed it.
CREATE TABLE evaluations (
    id          bigserial   PRIMARY KEY,
    domain      text        NOT NULL,
    dataset     text        NOT NULL,
    k           integer     NOT NULL CHECK (k > 0),
    report      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
