-- 0012: event bodies of 2 KiB and more arrive zstd-compressed from the consumer
-- (projections.db.store_body): PostgreSQL stores them as they are, out of line, without trying
-- pglz on them again. Bodies already stored (pglz or plain JSON) stay readable as they are.
ALTER TABLE event_store ALTER COLUMN body SET STORAGE EXTERNAL;
