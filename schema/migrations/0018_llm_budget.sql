-- A shared limit per LLM endpoint: the requests and tokens every worker of the deployment spent in
-- each window (a minute, by default), counted here so that GRPOD_LLM_MAX_RPM and _TPM hold for all.
CREATE TABLE llm_budget (
    endpoint      text        NOT NULL,
    window_start  timestamptz NOT NULL,
    requests      integer     NOT NULL,
    tokens        bigint      NOT NULL,
    PRIMARY KEY (endpoint, window_start)
);
