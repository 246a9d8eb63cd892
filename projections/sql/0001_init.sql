-- 0001: the event store, the consumer's positions and the first read models.
-- Applied once by projections/migrate.py inside one transaction and recorded in schema_migrations.

-- Every accepted event, exactly as it came off the wire. Replay reads from here.
CREATE TABLE event_store (
    id              uuid        PRIMARY KEY,           -- the dedupe key
    run_path        text        NOT NULL,              -- entity/project/run_id (the Kafka key)
    type            text        NOT NULL,
    v               integer     NOT NULL,
    writer          text        NOT NULL,
    seq             bigint      NOT NULL,
    event_time      timestamptz NOT NULL,              -- the writer's clock
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    kafka_partition integer,
    kafka_offset    bigint,
    body            bytea       NOT NULL               -- original bytes
);
CREATE INDEX event_store_run ON event_store (run_path, kafka_partition, kafka_offset);

-- Where each consumer group is in each partition: written in the same transaction as the
-- projection rows, so PostgreSQL (not Kafka) is the source of truth for the position.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,                  -- first offset not yet applied
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Sequence tracking per (writer, run): seq makes loss, duplicates and reordering visible.
-- Keyed by run too because one writer (the API, the watchdog) can write to many runs, and
-- only one run's events share a partition and hence an order.
CREATE TABLE writers (
    writer      text        NOT NULL,
    run_path    text        NOT NULL,
    source_kind text        NOT NULL,
    rank        integer,
    last_seq    bigint      NOT NULL,
    gaps        bigint      NOT NULL DEFAULT 0,        -- events missing before an accepted one
    duplicates  bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (writer, run_path)
);

CREATE TABLE runs (
    pk           bigserial   UNIQUE,
    entity       text        NOT NULL,
    project      text        NOT NULL,
    run_id       text        NOT NULL,
    name         text,
    state        text        NOT NULL,
    run_group    text,
    job_type     text,
    tags         text[]      NOT NULL DEFAULT '{}',
    config       jsonb       NOT NULL DEFAULT '{}',
    summary      jsonb       NOT NULL DEFAULT '{}',    -- non-finite floats tagged as {"$f": "NaN"}
    notes        text,
    host         jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    heartbeat_at timestamptz,
    finished_at  timestamptz,
    exit_code    integer,
    last_step    bigint,
    deleted      boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (entity, project, run_id)
);

-- Metric history, one row per (run, key, step): per-key reads in step order are an index range.
-- value holds numbers (NaN and infinities included); value_json anything else (strings, lists).
CREATE TABLE history (
    run_pk     bigint  NOT NULL,
    key        text    NOT NULL,
    step       bigint  NOT NULL,
    value      float8,
    value_json jsonb,
    PRIMARY KEY (run_pk, key, step)
);

-- The audit of state changes: accepted moves and refused ones, with the causing event.
CREATE TABLE state_transitions (
    id          bigserial   PRIMARY KEY,
    run_pk      bigint      NOT NULL,
    from_state  text,
    to_state    text        NOT NULL,
    accepted    boolean     NOT NULL,
    event_time  timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    event_id    uuid        NOT NULL,
    actor       text        NOT NULL,
    reason      text
);
CREATE INDEX state_transitions_run ON state_transitions (run_pk, id);
