-- 0010: a roll-up of every run's history in chunks of 100 steps per key, for sampled reads.
-- Per chunk: how many numeric points, their first and last step, and the lowest and highest
-- point as {value, step} and {value, -step} (float8 order: -inf lowest, NaN highest; a tie keeps
-- the earliest step). A sample whose buckets are whole chunks reads these rows instead of the
-- points: a 1M-point metric is 10k chunk rows. The consumer recomputes every chunk a batch
-- touched from `history` in the batch's transaction, so a chunk always equals its points
-- (overwrites by a lower rank included). A read model: replay rebuilds it.
CREATE TABLE history_chunks (
    run_pk     bigint   NOT NULL,
    key        text     NOT NULL,
    chunk      bigint   NOT NULL,  -- step / 100
    n          integer  NOT NULL,  -- numeric points (0 when every point of the chunk is non-numeric)
    first_step bigint,
    last_step  bigint,
    lo         float8[],
    hi         float8[],
    PRIMARY KEY (run_pk, key, chunk)
);

INSERT INTO history_chunks (run_pk, key, chunk, n, first_step, last_step, lo, hi)
SELECT run_pk, key, step / 100, count(*), min(step), max(step),
       min(ARRAY[value, step::float8]), max(ARRAY[value, -step::float8])
FROM history WHERE value IS NOT NULL
GROUP BY run_pk, key, step / 100;
