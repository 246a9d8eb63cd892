-- 0003: a global, increasing position in the event store, so a replay reads events in exactly
-- the order the live consumer applied them and can catch up with what arrived meanwhile.
ALTER TABLE event_store ADD COLUMN pos bigserial;
CREATE UNIQUE INDEX event_store_pos ON event_store (pos);
