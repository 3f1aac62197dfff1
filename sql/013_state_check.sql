-- The jobs.state CHECK written as comparisons instead of an IN list. SQLite
-- evaluates "state IN (seven values)" by building an ephemeral table, once
-- per row a statement writes: each claim and each outcome paid about 2 us
-- for it. The two forms accept the same values, and every row already
-- satisfies both, so the table's text is changed in place (SQLite's
-- documented procedure for a constraint that does not change what is
-- stored) instead of copying the table. A schema that does not hold the
-- text of 001_schema.sql exactly is left as it is.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql,
    'CHECK (state IN (''queued'', ''running'', ''waiting'', ''retrying'','
        || char(10)
        || '                         ''succeeded'', ''failed'', ''cancelled''))',
    'CHECK (state = ''queued'' OR state = ''running'' OR state = ''waiting'''
        || char(10)
        || '               OR state = ''retrying'' OR state = ''succeeded'''
        || char(10)
        || '               OR state = ''failed'' OR state = ''cancelled'')')
WHERE type = 'table' AND name = 'jobs';
-- RESET reloads this connection's schema from the edited text; the view
-- made and dropped moves the schema cookie, so every other connection
-- reloads it too before its next statement.
PRAGMA writable_schema = RESET;
CREATE VIEW state_check_reload AS SELECT 1;
DROP VIEW state_check_reload;
