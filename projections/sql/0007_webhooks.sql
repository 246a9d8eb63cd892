-- 0007: alert delivery to webhooks configured per project, with every attempt recorded.
-- Neither table is a read model (replay keeps them): deliveries are keyed by the alert's event
-- id, which a replay preserves, so a replay never re-sends what was delivered.
CREATE TABLE webhooks (
    id         bigserial   PRIMARY KEY,
    entity     text        NOT NULL,
    project    text        NOT NULL,
    url        text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    active     boolean     NOT NULL DEFAULT true,
    UNIQUE (entity, project, url)
);

CREATE TABLE alert_deliveries (
    alert_event_id uuid        NOT NULL,
    webhook_id     bigint      NOT NULL REFERENCES webhooks (id),
    attempt        integer     NOT NULL,
    attempted_at   timestamptz NOT NULL DEFAULT now(),
    status         integer,                            -- HTTP status, NULL when no answer came
    error          text,
    delivered      boolean     NOT NULL,
    PRIMARY KEY (alert_event_id, webhook_id, attempt)
);
