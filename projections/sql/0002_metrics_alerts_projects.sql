-- 0002: metric definitions and summaries, alerts, runtime, and the projects overview.

ALTER TABLE runs
    ADD COLUMN runtime     float8  NOT NULL DEFAULT 0,     -- seconds, by the training process's clock
    ADD COLUMN metrics     jsonb   NOT NULL DEFAULT '{}',  -- define_metric definitions by name or glob
    ADD COLUMN stats       jsonb   NOT NULL DEFAULT '{}',  -- per key: min, max, sum, count, first, last
    ADD COLUMN overrides   text[]  NOT NULL DEFAULT '{}',  -- summary keys set explicitly
    ADD COLUMN alerts_sent jsonb   NOT NULL DEFAULT '{}';  -- alert title -> time of the last one sent

CREATE INDEX runs_project ON runs (entity, project, created_at DESC);

CREATE TABLE metric_definitions (
    run_pk     bigint      NOT NULL,
    name       text        NOT NULL,                   -- a metric name or a glob like "val/*"
    definition jsonb       NOT NULL,                   -- step_metric, step_sync, hidden, summary, goal
    defined_at timestamptz NOT NULL,
    PRIMARY KEY (run_pk, name)
);

-- Every alert, including the ones suppressed by wait_duration (with the reason): none dropped.
CREATE TABLE alerts (
    id            bigserial   PRIMARY KEY,
    run_pk        bigint      NOT NULL,
    title         text        NOT NULL,
    text          text        NOT NULL,
    level         text        NOT NULL,
    wait_duration float8,
    event_time    timestamptz NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    event_id      uuid        NOT NULL UNIQUE,
    actor         text        NOT NULL,
    suppressed    boolean     NOT NULL,
    reason        text
);
CREATE INDEX alerts_run ON alerts (run_pk, id);

-- The projects overview, always consistent with runs (it is computed from them).
CREATE VIEW projects AS
SELECT entity,
       project,
       min(created_at)                                    AS created_at,
       max(updated_at)                                    AS last_active,
       count(*) FILTER (WHERE NOT deleted)                AS total_runs,
       coalesce(sum(runtime) FILTER (WHERE NOT deleted), 0) AS total_compute,
       (SELECT jsonb_object_agg(s.state, s.n) FROM (
            SELECT r2.state, count(*) AS n FROM runs r2
            WHERE r2.entity = runs.entity AND r2.project = runs.project AND NOT r2.deleted
            GROUP BY r2.state) s)                          AS runs_by_state,
       array_remove(array_agg(DISTINCT host->>'user'), NULL) AS contributors
FROM runs
GROUP BY entity, project;
