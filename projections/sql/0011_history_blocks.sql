-- 0011: numeric points appended in bulk are stored in blocks, not one row per point.
--
-- A block is up to 1,000 points of one key of one run, all of one rank, in step order: `vals`
-- holds the values (NaN and infinities included, NULL for a JSON null) and `steps` the steps, or
-- NULL when they are first_step..last_step without a gap. COPYing blocks takes ~5x the points/s
-- of one row per point with its primary key (bench/README.md), and a block is ~8 bytes a point.
--
-- Invariants the consumer keeps (consumers/postgres.py, _write_history):
-- - a (run, key, step) is stored once, in `history` or in one block, never in both;
-- - the blocks of a (run, key) cover disjoint step ranges (they hold points past the run's last
--   step, so each write's blocks come after the previous ones), which lets a scan read blocks in
--   first_step order as one sorted sequence;
-- - a point that lands inside a block's chunk range later (a lower rank, a step logged again)
--   first moves that block's points into `history` ("explodes" it), where the upsert and the
--   chunk recompute work as before.
-- projections.db.HISTORY_POINTS reads both tables as one set of points.
CREATE TABLE history_blocks (
    run_pk     bigint   NOT NULL,
    key        text     NOT NULL,
    first_step bigint   NOT NULL,
    last_step  bigint   NOT NULL,
    n          integer  NOT NULL,  -- points in the block
    rank       integer  NOT NULL,
    steps      bigint[],
    vals       float8[] NOT NULL,
    PRIMARY KEY (run_pk, key, first_step)
);
-- Out of line without compression: compressing the arrays cost more than it saved.
ALTER TABLE history_blocks ALTER COLUMN steps SET STORAGE EXTERNAL, ALTER COLUMN vals SET STORAGE EXTERNAL;
