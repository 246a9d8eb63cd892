-- 0009: the runs list's default page and its total come from one partial index.
-- Lists leave deleted runs out; with `NOT deleted` in the index predicate the count is an
-- index-only scan and the newest-first page an index range (10k runs: 4-6 ms became ~1.5 ms).
-- It replaces 0006's index on the same columns: a list that includes deleted runs scans the
-- project's rows through the primary key instead, which is rare and still bounded by the project.
CREATE INDEX runs_live_created ON runs (entity, project, created_at, pk) WHERE NOT deleted;
DROP INDEX runs_project_created_pk;
