-- Library consolidation: one LLM call merges a cluster of near-duplicate experiences, recorded in
-- the ledger like every other call.
ALTER TABLE llm_calls DROP CONSTRAINT llm_calls_purpose_check;
ALTER TABLE llm_calls ADD CONSTRAINT llm_calls_purpose_check
    CHECK (purpose IN ('summary', 'advantage', 'operations', 'consolidation', 'merge'));
