-- sessions.raw holds every item verbatim (a few KB each). lz4 compresses it several times faster than the
-- default pglz, which made TOAST compression the largest cost of a backfill. Servers built without lz4
-- (or before PostgreSQL 14) keep the default.
do $$
begin
    alter table sessions alter column raw set compression lz4;
    alter table sessions alter column structured_output set compression lz4;
exception when others then
    raise notice 'lz4 compression is not available; sessions.raw keeps the default compression';
end
$$;
