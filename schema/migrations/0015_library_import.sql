-- Shareable libraries: a version made from another library's export (`grpod library import`) says
-- so in created_by, as a distillation's or a consolidation's does.
ALTER TABLE library_versions DROP CONSTRAINT library_versions_created_by_check;
ALTER TABLE library_versions ADD CONSTRAINT library_versions_created_by_check
    CHECK (created_by IN ('distillation', 'consolidation', 'operator', 'import'));
