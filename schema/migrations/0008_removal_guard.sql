-- The removal guard: a version that would remove too many of its parent's experiences is stored
-- but labelled nothing; the audit log records the refusal ('refuse'), its distillations are
-- 'refused', and an operator may still publish it with `grpod library promote`. And a
-- distillation whose traces another one used meanwhile is 'superseded': each trace is learned
-- from once.
ALTER TABLE library_events DROP CONSTRAINT library_events_action_check;
ALTER TABLE library_events ADD CONSTRAINT library_events_action_check CHECK (action IN (
    'publish', 'promote', 'discard', 'rollback', 'pin', 'unpin', 'freeze', 'unfreeze', 'refuse'));
ALTER TABLE distillations DROP CONSTRAINT distillations_status_check;
ALTER TABLE distillations ADD CONSTRAINT distillations_status_check CHECK (
    status IN ('running', 'failed', 'distilled', 'applied', 'refused', 'superseded'));
