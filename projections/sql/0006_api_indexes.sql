-- 0006: indexes for the read API.
-- Runs pages sorted by creation time (the default order) are keyset-paged on (created_at, pk).
CREATE INDEX runs_project_created_pk ON runs (entity, project, created_at, pk);
-- A run's raw events in store order (GET .../events pages by pos).
CREATE INDEX event_store_run_pos ON event_store (run_path, pos);
