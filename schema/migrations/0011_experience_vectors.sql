-- Bounded prompts: each experience text's embedding, computed once per domain and embedding model
-- (keyed by the text's hash: an UPDATE gives the new text its own), so that a distillation step
-- shows the LLM the experiences nearest to its group within a token budget, not the whole library;
-- and, per distillation, which experiences each step's prompt showed, which a replay reads.
CREATE TABLE experience_vectors (
    domain     text        NOT NULL REFERENCES domains (name),
    model      text        NOT NULL,
    text_hash  bytea       NOT NULL,  -- SHA-256 of the experience's text
    embedding  vector      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, model, text_hash)
);

ALTER TABLE distillations ADD COLUMN shown jsonb;  -- {step: [experience ids]}; NULL: the whole library
