-- One tick, one run: each scheduled tick is claimed per source under the source's lock before it runs, so a replica
-- that reaches a tick after another replica already ran it (it tried the lock just after the first released it)
-- skips it instead of running it again. Additive: older binaries ignore the column.
alter table sync_state add column claimed_tick timestamptz;
comment on column sync_state.claimed_tick is 'The latest scheduled tick (of sync.schedule or sync.reconcile_schedule) a replica has claimed and run for this source; a replica skips a tick at or before it.';
