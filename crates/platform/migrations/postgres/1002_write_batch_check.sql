-- A write batch run on its own, outside any transaction (crates/platform/src/write_batch.rs,
-- run_self_checked), checks inside its one statement that each of its statements changed the
-- rows it had to: `changed` holds each statement's count, `expected` the count it must be
-- (NULL: any). At the first that differs the statement fails, so PostgreSQL rolls back all of
-- it, with SQLSTATE RB001 and a message naming the statement, which the suite reads back.
-- VOLATILE (the default) so the planner never evaluates it ahead of the writes.
CREATE OR REPLACE FUNCTION returns_write_batch_check(changed bigint[], expected bigint[])
RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(changed, 1), 0) LOOP
        IF expected[i] IS NOT NULL AND changed[i] IS DISTINCT FROM expected[i] THEN
            RAISE EXCEPTION 'write batch statement % changed % rows, not %',
                i - 1, changed[i], expected[i]
                USING ERRCODE = 'RB001';
        END IF;
    END LOOP;
    RETURN coalesce(array_length(changed, 1), 0);
END
$$;
