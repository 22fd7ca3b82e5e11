-- Indexes behind the BI views of 20261129000010_bi_views.sql, for the filters dashboards use: a period of days or
-- weeks, often one org. Measured at 1,000,000 sessions (see docs/queries.md, "Performance").
--
-- The views bucket sessions by expressions over created_at; a filter on the view's day or week column reaches the
-- sessions table as that same expression, so only an index on exactly that expression can serve it. Not partial
-- (although the views read live sessions only): the planner takes statistics for an expression from non-partial
-- indexes only, and without them it guesses a third of the table for any date range and picks full scans. Few
-- distinct keys, so B-tree deduplication keeps them small (≈ 7 MB each at 1 M sessions). Built inside the
-- migration's transaction: a few seconds of blocked writes at 1 M sessions.
create index sessions_created_day_org_idx on sessions (((created_at at time zone 'UTC')::date), org_id);
create index sessions_created_week_org_idx on sessions ((date_trunc('week', created_at at time zone 'UTC')::date), org_id);

-- v_sessions and v_daily_usage count each session's PRs and merged PRs: with pr_state in the key both are answered
-- from the index alone (the primary key (session_id, pr_url) needs the heap for the state, and is wider).
create index session_pull_requests_session_state_idx on session_pull_requests (session_id, pr_state);
