-- 0008: API keys. A key looks like rl_<entity>_<secret>; only the sha256 of the whole key is
-- stored, so a leaked table gives no usable key. Scopes: 'read' and/or 'write', per entity.
-- Not a read model (replay keeps it).
CREATE TABLE api_keys (
    id           bigserial   PRIMARY KEY,
    entity       text        NOT NULL,
    key_hash     bytea       NOT NULL UNIQUE,          -- sha256 of the full key text
    prefix       text        NOT NULL,                 -- the first characters, to tell keys apart in `list`
    scopes       text[]      NOT NULL,
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_entity ON api_keys (entity, id);
