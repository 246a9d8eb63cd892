-- 0004: the watchdog's scan reads only live runs, by their last sign of life.
CREATE INDEX runs_live_by_activity ON runs (GREATEST(heartbeat_at, updated_at))
    WHERE state IN ('running', 'preempting');
