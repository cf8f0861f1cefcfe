-- Libraries: labels that point at versions, an append-only audit log of every label move and
-- operator action, and a domain's pin and freeze.

ALTER TABLE domains
    ADD COLUMN pinned_version integer,       -- production is held at this version whatever gets learned
    ADD COLUMN frozen_at      timestamptz;   -- learning stopped (events are still stored)

CREATE TABLE library_labels (
    domain    text        NOT NULL REFERENCES domains (name),
    label     text        NOT NULL CHECK (label IN ('production', 'candidate')),
    version   integer     NOT NULL,
    moved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, label),
    FOREIGN KEY (domain, version) REFERENCES library_versions (domain, version)
);

-- Who did what to a domain's library, when and why, with the statistics behind an automatic move.
CREATE TABLE library_events (
    id            bigserial   PRIMARY KEY,
    domain        text        NOT NULL REFERENCES domains (name),
    action        text        NOT NULL CHECK (action IN (
                      'publish', 'promote', 'discard', 'rollback', 'pin', 'unpin', 'freeze', 'unfreeze')),
    label         text,
    from_version  integer,
    to_version    integer,
    actor         text        NOT NULL,
    reason        text        NOT NULL,
    statistics    jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX library_events_domain ON library_events (domain, id);

CREATE FUNCTION library_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the library audit log is append-only: event % cannot be changed or deleted', OLD.id;
END $$;

CREATE TRIGGER library_events_append_only BEFORE UPDATE OR DELETE ON library_events
    FOR EACH ROW EXECUTE FUNCTION library_events_append_only();

-- Every version has a reward record: its traces name it.
CREATE INDEX traces_library_version ON traces (domain, library_version);

-- Versions made before labels existed: the newest of each domain is production.
INSERT INTO library_labels (domain, label, version)
SELECT domain, 'production', max(version) FROM library_versions GROUP BY domain;
INSERT INTO library_events (domain, action, label, to_version, actor, reason)
SELECT domain, 'publish', 'production', max(version), 'migration', 'labels introduced: the newest version'
FROM library_versions GROUP BY domain;
