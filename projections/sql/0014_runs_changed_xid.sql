-- 0014: each runs row carries the id of the transaction that last wrote it, so a reader can fetch
-- only the rows that changed since a snapshot it took earlier (the API's in-memory runs index,
-- api/runs_index.py). A transaction that a snapshot does not see has an id at or above the
-- snapshot's xmin, so `changed_xid >= xmin of the last snapshot` finds every row written since.
-- Rows written before this migration keep '0': a full load reads them, no later read needs to.
-- The trigger sets it on every INSERT, UPDATE and COPY, whoever writes (consumer, replay, tools).
ALTER TABLE runs ADD COLUMN changed_xid xid8 NOT NULL DEFAULT '0';

CREATE FUNCTION runs_changed_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

CREATE TRIGGER runs_changed_xid BEFORE INSERT OR UPDATE ON runs
    FOR EACH ROW EXECUTE FUNCTION runs_changed_xid();

CREATE INDEX runs_changed ON runs (entity, project, changed_xid);
