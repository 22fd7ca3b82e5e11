-- Correct under database, lock and clock faults (issue 9). Additive only: an older binary keeps working.

-- A reconcile's record of the sessions it saw must survive a PostgreSQL crash: an unlogged table is emptied by
-- crash recovery, and a reconcile that carried on after reconnecting would then mark every session it had seen
-- before the crash deleted.
alter table sync_reconcile_seen set logged;
comment on table sync_reconcile_seen is 'Scratch space of reconcile runs: sessions seen so far by a running reconcile (its rows are removed when it ends; a dead run''s rows by the next reconcile of its source).';

-- The source that delivered each session, so that several sources (enterprises, tokens) share one schema without
-- touching each other's sessions. Existing rows belong to the one source this warehouse has synced so far. The
-- default stays that source: an older release still running during a rolling update inserts sessions without
-- naming one.
alter table sessions add column source text not null default 'devin';
do $$
declare
    only_source text;
begin
    select min(source) into only_source from sync_state having count(*) = 1;
    if only_source is not null and only_source <> 'devin' then
        update sessions set source = only_source;
        execute format('alter table sessions alter column source set default %L', only_source);
    end if;
end
$$;
comment on column sessions.source is 'The source (config sync.source) that delivered the session. A session id belongs to one source; one arriving from another fails the run.';

-- Fencing: every run takes the source's advisory lock and then bumps the lease generation; every transaction of
-- the run first re-reads the generation (and proves its lock is still held), so a run that lost its lock can
-- never commit after another run took over.
alter table sync_state add column lease_generation bigint not null default 0;
comment on column sync_state.lease_generation is 'Bumped by each run that takes the source''s single-flight lock; a run whose generation is no longer the current one stops before writing anything more.';

-- What bounds the next watermark: the database's clock when the server time behind the watermark was observed.
alter table sync_state add column watermark_observed_at timestamptz;
comment on column sync_state.watermark_observed_at is 'Database time at which the API server time behind the watermark was observed; the next watermark may not move further than the time elapsed since then (plus sync.clock_tolerance).';

-- The API clock's offset from the database's, as last accepted (see src/sync/clock.rs), and a different offset that
-- consecutive walks agree on. A watermark set before this is taken as observed when its row was last written.
alter table sync_state add column clock_offset bigint;
alter table sync_state add column clock_suspect_offset bigint;
alter table sync_state add column clock_suspect_count integer not null default 0;
update sync_state set clock_offset = watermark + 30 - extract(epoch from updated_at)::bigint,
                      watermark_observed_at = updated_at
where watermark is not null;
comment on column sync_state.clock_offset is 'The API server clock''s offset from the database''s clock (seconds), as last accepted; a server time that disagrees with it by more than sync.clock_tolerance is a clock anomaly. Set it to null to accept the API''s clock afresh.';
comment on column sync_state.clock_suspect_offset is 'A different offset that the last walks agree on (a clock corrected backwards is adopted after 3).';
comment on column sync_state.clock_suspect_count is 'How many consecutive walks agreed on clock_suspect_offset.';

-- The last time the API's clock disagreed with elapsed time (a response Date too far ahead or behind).
alter table sync_state add column clock_anomaly text;
alter table sync_state add column clock_anomaly_at timestamptz;
comment on column sync_state.clock_anomaly is 'The last clock anomaly: what the API server''s clock claimed, and what the watermark was bounded to instead.';
comment on column sync_state.clock_anomaly_at is 'When the last clock anomaly was seen (database time).';
