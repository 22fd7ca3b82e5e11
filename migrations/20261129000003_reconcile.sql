-- Sessions a reconcile run has seen so far. Filled batch by batch in the same transactions as the upserts,
-- so memory stays flat however large the history; emptied when the run ends (a crashed run's rows are removed
-- by the next reconcile). Unlogged: it is scratch space, and a crash that loses it only costs a re-run.
create unlogged table sync_reconcile_seen (
    run_id bigint not null,
    session_id text not null,
    constraint sync_reconcile_seen_pkey primary key (run_id, session_id)
);

comment on table sync_reconcile_seen is 'Scratch space of reconcile runs: sessions seen so far by a running reconcile (emptied when it ends).';
comment on column sync_reconcile_seen.run_id is 'The reconcile run (sync_runs.run_id).';
comment on column sync_reconcile_seen.session_id is 'A session the run has seen in the API.';
