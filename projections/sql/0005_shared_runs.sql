-- 0005: runs written by several ranks at once (a shared run id).
ALTER TABLE runs
    ADD COLUMN open_writers text[] NOT NULL DEFAULT '{}',  -- writers that sent init and no finish yet
    ADD COLUMN pending_exit jsonb  NOT NULL DEFAULT '{}';  -- finishes combined so far
-- The rank that wrote a history point: for one key at one step, the lowest rank wins.
ALTER TABLE history ADD COLUMN rank integer NOT NULL DEFAULT 0;
