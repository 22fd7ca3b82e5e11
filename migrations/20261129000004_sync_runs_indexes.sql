-- Lookups that run on every run or probe stay cheap however long the run history grows:
-- closing runs left `running` by a dead process, and /readyz's last successful run.
create index sync_runs_running_idx on sync_runs (source) where status = 'running';
create index sync_runs_succeeded_idx on sync_runs (source, finished_at desc) where status = 'succeeded';
