-- A write batch run on its own, outside any transaction (crates/platform/src/write_batch.rs,
-- run_self_checked), checks inside its one statement that each checked statement changed the
-- rows it had to: `statements` numbers them in the batch, `changed` holds the rows each
-- changed, `expected` the rows it had to. At the first that differs the statement fails, so
-- PostgreSQL rolls back all of it, with SQLSTATE RB001 and a message naming the statement,
-- which the suite reads back. VOLATILE (the default) so the planner never folds it ahead of
-- the writes.
CREATE OR REPLACE FUNCTION returns_write_batch_check(
    statements integer[],
    changed bigint[],
    expected bigint[]
)
RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(statements, 1), 0) LOOP
        IF changed[i] IS DISTINCT FROM expected[i] THEN
            RAISE EXCEPTION 'write batch statement % changed % rows, not %',
                statements[i], changed[i], expected[i]
                USING ERRCODE = 'RB001';
        END IF;
    END LOOP;
    RETURN coalesce(array_length(statements, 1), 0);
END
$$;
