-- The warehouse as a release before migration 20261201000007_rollups.sql left it (the views it replaces are
-- dropped; the migration creates them again).
drop view v_daily_usage, v_pull_request_outcomes, v_analysis_issues, v_action_items, v_daily_starters, v_daily_issues,
    v_daily_issue_levels, v_daily_action_items, rollup_current_contributions;
drop function rollup_apply(text[]);
drop table rollup_session_contributions, rollup_daily_usage, rollup_daily_starters, rollup_daily_pull_requests,
    rollup_daily_issues, rollup_daily_issue_levels, rollup_daily_action_items, rollup_daily_action_item_types;
delete from _sqlx_migrations where version = 20261201000007;
