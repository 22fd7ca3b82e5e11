-- BI layer (issue 6): documented views for dashboards and ad-hoc SQL. Views only read the tables of the
-- earlier migrations; names are unqualified because the service sets search_path to the configured schema.
--
-- Conventions shared by every view:
--   * all timestamps are timestamptz; day and week buckets are computed in UTC;
--   * day  = the UTC calendar day (a date; the day runs from 00:00:00 UTC to 24:00:00 UTC);
--   * week = the ISO week, given as the date of its Monday (Monday 00:00 UTC to the next Monday 00:00 UTC);
--   * sessions are bucketed by their created_at (PRs, issues and action items carry no time of their own);
--   * soft-deleted sessions (sessions.deleted_at is not null) and everything hanging off them are left out;
--   * a missing origin is shown as 'unknown', a missing category as 'uncategorized', a PR URL whose repository
--     cannot be parsed (hosts other than GitHub and GitLab) as repo 'unknown';
--   * a pr_state other than open, merged or closed (null included) counts as unknown.
-- The expressions for day and week are repeated verbatim in every view so that the expression indexes of
-- 20261129000011_bi_indexes.sql serve filters on them.

-- One row per live session, with friendly columns.
create view v_sessions as
select
    s.session_id,
    s.created_at,
    (s.created_at at time zone 'UTC')::date as day,
    date_trunc('week', s.created_at at time zone 'UTC')::date as week,
    s.updated_at,
    s.org_id,
    s.user_id,
    s.service_user_id,
    coalesce(s.user_id, s.service_user_id) as started_by,
    case
        when s.user_id is not null then 'user'
        when s.service_user_id is not null then 'service_user'
        else 'unknown'
    end as started_by_kind,
    s.title,
    s.url,
    coalesce(s.origin, 'unknown') as origin,
    coalesce(s.category, 'uncategorized') as category,
    s.subcategory,
    s.status,
    s.status_detail,
    s.session_size,
    s.acus_consumed,
    s.num_user_messages,
    s.num_devin_messages,
    s.is_archived,
    s.playbook_id,
    s.parent_session_id,
    s.tags,
    -- Scalar subqueries rather than a join: a query that does not select them does not pay for them.
    (select count(*) from session_pull_requests p where p.session_id = s.session_id) as pr_count,
    (select count(*) from session_pull_requests p
        where p.session_id = s.session_id and p.pr_state = 'merged') as merged_pr_count,
    s.has_analysis
from sessions s
where s.deleted_at is null;

comment on view v_sessions is 'One row per live session (soft-deleted sessions are left out), with friendly columns for dashboards. Times in UTC.';
comment on column v_sessions.session_id is 'Devin session id.';
comment on column v_sessions.created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_sessions.day is 'UTC calendar day of created_at (00:00 to 24:00 UTC).';
comment on column v_sessions.week is 'ISO week of created_at, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_sessions.updated_at is 'When the session last changed, as reported by the API (UTC).';
comment on column v_sessions.org_id is 'Organization the session belongs to.';
comment on column v_sessions.user_id is 'User who started the session; null when a service user did.';
comment on column v_sessions.service_user_id is 'Service user (API key) that started the session, if any.';
comment on column v_sessions.started_by is 'Who started the session: the user id, else the service user id; null when the API names neither.';
comment on column v_sessions.started_by_kind is 'user (a user id is set), service_user (only a service user id is set) or unknown (neither).';
comment on column v_sessions.title is 'Session title, if any.';
comment on column v_sessions.url is 'Link to the session in the Devin web app.';
comment on column v_sessions.origin is 'Where the session was started (webapp, slack, api, …); unknown when the API gives none.';
comment on column v_sessions.category is 'Use-case category (bug_fixing, feature_development, …); uncategorized until categorisation has run.';
comment on column v_sessions.subcategory is 'Subcategory display name; null while uncategorized.';
comment on column v_sessions.status is 'Session status: new, claimed, running, exit, error, suspended, resuming (newer values kept as they come).';
comment on column v_sessions.status_detail is 'More detail on the status (working, waiting_for_user, finished, …), if any.';
comment on column v_sessions.session_size is 'Size class from ACU usage and message count: xs, s, m, l, xl.';
comment on column v_sessions.acus_consumed is 'Agent compute units consumed by the session.';
comment on column v_sessions.num_user_messages is 'Messages the user sent.';
comment on column v_sessions.num_devin_messages is 'Messages Devin sent.';
comment on column v_sessions.is_archived is 'Whether the session is archived.';
comment on column v_sessions.playbook_id is 'Playbook the session ran, if any.';
comment on column v_sessions.parent_session_id is 'Parent session when this session was started by another one.';
comment on column v_sessions.tags is 'Tags on the session.';
comment on column v_sessions.pr_count is 'Pull requests the session opened (any state).';
comment on column v_sessions.merged_pr_count is 'Pull requests the session opened whose state is merged.';
comment on column v_sessions.has_analysis is 'Whether the AI analysis has been generated for the session.';

-- Usage per UTC day × org × origin × category.
create view v_daily_usage as
select
    (s.created_at at time zone 'UTC')::date as day,
    s.org_id,
    coalesce(s.origin, 'unknown') as origin,
    coalesce(s.category, 'uncategorized') as category,
    count(*) as sessions,
    sum(s.acus_consumed) as acus,
    sum(s.num_user_messages)::bigint as user_messages,
    sum(s.num_devin_messages)::bigint as devin_messages,
    count(*) filter (where pr.prs > 0) as sessions_with_pr,
    count(*) filter (where pr.any_merged) as sessions_with_merged_pr,
    count(*) filter (where s.has_analysis) as sessions_with_analysis
from sessions s
-- one index probe per session answers both questions
cross join lateral (
    select count(*) as prs, coalesce(bool_or(p.pr_state = 'merged'), false) as any_merged
    from session_pull_requests p
    where p.session_id = s.session_id
) pr
where s.deleted_at is null
group by 1, 2, 3, 4;

comment on view v_daily_usage is 'Usage per UTC day × org × origin × category, from live sessions bucketed by created_at. Every measure adds up across rows (sum them for weeks, months or all orgs).';
comment on column v_daily_usage.day is 'UTC calendar day the sessions were created (00:00 to 24:00 UTC).';
comment on column v_daily_usage.org_id is 'Organization.';
comment on column v_daily_usage.origin is 'Where the sessions were started; unknown when the API gives none.';
comment on column v_daily_usage.category is 'Use-case category; uncategorized until categorisation has run.';
comment on column v_daily_usage.sessions is 'Sessions created that day.';
comment on column v_daily_usage.acus is 'ACUs those sessions consumed (so far; a running session''s ACUs still grow).';
comment on column v_daily_usage.user_messages is 'Messages users sent in those sessions.';
comment on column v_daily_usage.devin_messages is 'Messages Devin sent in those sessions.';
comment on column v_daily_usage.sessions_with_pr is 'Sessions that opened at least one pull request (any state).';
comment on column v_daily_usage.sessions_with_merged_pr is 'Sessions with at least one merged pull request.';
comment on column v_daily_usage.sessions_with_analysis is 'Sessions whose AI analysis has been generated.';

-- Pull requests opened by sessions, per ISO week × org × repository.
create view v_pull_request_outcomes as
select
    date_trunc('week', s.created_at at time zone 'UTC')::date as week,
    s.org_id,
    coalesce(p.repo, 'unknown') as repo,
    count(*) as prs,
    count(*) filter (where p.pr_state = 'merged') as merged,
    count(*) filter (where p.pr_state = 'closed') as closed,
    count(*) filter (where p.pr_state = 'open') as open,
    count(*) filter (where p.pr_state is null or p.pr_state not in ('open', 'merged', 'closed')) as unknown,
    (count(*) filter (where p.pr_state = 'merged'))::double precision / count(*) as merge_rate,
    (count(*) filter (where p.pr_state = 'merged'))::double precision
        / nullif(count(*) filter (where p.pr_state in ('merged', 'closed')), 0) as decided_merge_rate
from session_pull_requests p
join sessions s on s.session_id = p.session_id
where s.deleted_at is null
group by 1, 2, 3;

comment on view v_pull_request_outcomes is 'Pull requests opened by live sessions, per ISO week (of the session''s created_at, UTC) × org × repository, by their current state. Counts add up across rows; recompute rates from the summed counts.';
comment on column v_pull_request_outcomes.week is 'ISO week the sessions were created, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC. PRs carry no time of their own.';
comment on column v_pull_request_outcomes.org_id is 'Organization of the sessions.';
comment on column v_pull_request_outcomes.repo is 'Repository as owner/name (GitLab: group/project); unknown for PR URLs on other hosts.';
comment on column v_pull_request_outcomes.prs is 'Pull requests opened by those sessions (each session and PR URL once).';
comment on column v_pull_request_outcomes.merged is 'Of those, PRs whose state is merged.';
comment on column v_pull_request_outcomes.closed is 'Of those, PRs closed without merge (state closed).';
comment on column v_pull_request_outcomes.open is 'Of those, PRs still open.';
comment on column v_pull_request_outcomes.unknown is 'Of those, PRs whose state is null or a value other than open, merged, closed.';
comment on column v_pull_request_outcomes.merge_rate is 'merged / prs (0 to 1): open and unknown PRs count as not merged.';
comment on column v_pull_request_outcomes.decided_merge_rate is 'merged / (merged + closed) (0 to 1): the merge rate of PRs that are decided; null when none is.';

-- The impact of an analysis issue is free text ("high: blocked the build for an hour"). Its first word, when it is
-- a level, makes it groupable. Plain string functions, not a regular expression: over 1.7 M issues a regex costs
-- seconds. A one-expression SQL function, so the planner inlines it.
create function impact_level(impact text) returns text
language sql immutable parallel safe
as $$
    select case lower(rtrim(split_part(split_part(ltrim(left(impact, 40)), ' ', 1), ':', 1), '.,;!-'))
        when 'critical' then 'critical'
        when 'high' then 'high'
        when 'medium' then 'medium'
        when 'low' then 'low'
        else 'other'
    end
$$;

comment on function impact_level(text) is 'Impact level of an analysis issue: critical, high, medium or low when the first word of the impact text (before a space or colon, any case, trailing .,;!- ignored) is one of them; else other.';

-- One row per analysis issue of a live session: the row-level data behind v_analysis_issues, for slicing by time and org.
create view v_session_issues as
select
    i.session_id,
    s.created_at as session_created_at,
    (s.created_at at time zone 'UTC')::date as day,
    date_trunc('week', s.created_at at time zone 'UTC')::date as week,
    s.org_id,
    coalesce(s.category, 'uncategorized') as category,
    i.position,
    i.issue_id,
    i.label,
    impact_level(i.impact) as impact_level,
    i.impact,
    i.issue,
    s.url as session_url
from session_issues i
join sessions s on s.session_id = i.session_id
where s.deleted_at is null;

comment on view v_session_issues is 'One row per issue the AI analysis found in a live session, with the session''s time, org and category. The row-level data behind v_analysis_issues; use it to slice issues by time or org.';
comment on column v_session_issues.session_id is 'The session (v_sessions.session_id).';
comment on column v_session_issues.session_created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_session_issues.day is 'UTC calendar day the session was created (00:00 to 24:00 UTC).';
comment on column v_session_issues.week is 'ISO week the session was created, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_session_issues.org_id is 'Organization of the session.';
comment on column v_session_issues.category is 'Use-case category of the session; uncategorized until categorisation has run.';
comment on column v_session_issues.position is 'Index of the issue in the analysis'' list, from 0.';
comment on column v_session_issues.issue_id is 'The issue''s id in the analysis (referenced by action items); may be empty.';
comment on column v_session_issues.label is 'Short label of the issue (e.g. environment, knowledge, prompt, tooling).';
comment on column v_session_issues.impact_level is 'critical, high, medium or low when the impact text starts with that word (any case; see function impact_level), else other.';
comment on column v_session_issues.impact is 'The impact as the analysis states it (free text).';
comment on column v_session_issues.issue is 'What went wrong.';
comment on column v_session_issues.session_url is 'Link to the session in the Devin web app.';

-- Analysis issues per label × impact level × category, over all time.
create view v_analysis_issues as
with issues as (
    select i.label, impact_level(i.impact) as impact_level, coalesce(s.category, 'uncategorized') as category,
           count(*) as issues,
           -- collate "C": the distinct sort compares bytes, several times faster than the database's collation
           count(distinct i.session_id collate "C") as sessions_affected
    from session_issues i
    join sessions s on s.session_id = i.session_id
    where s.deleted_at is null
    group by 1, 2, 3
),
analysed as (
    select coalesce(category, 'uncategorized') as category, count(*) as analysed_sessions
    from sessions
    where deleted_at is null and has_analysis
    group by 1
)
select
    i.label,
    i.impact_level,
    i.category,
    i.issues,
    i.sessions_affected,
    coalesce(a.analysed_sessions, 0) as analysed_sessions,
    i.sessions_affected::double precision / nullif(a.analysed_sessions, 0) as share_of_sessions
from issues i
left join analysed a on a.category = i.category;

comment on view v_analysis_issues is 'Issues found by the AI analysis in live sessions, per label × impact level × category, over all time, with the share of analysed sessions affected. For a time range or one org, aggregate v_session_issues instead.';
comment on column v_analysis_issues.label is 'Short label of the issue (e.g. environment, knowledge, prompt, tooling).';
comment on column v_analysis_issues.impact_level is 'critical, high, medium or low when the impact text starts with that word (any case; see function impact_level), else other.';
comment on column v_analysis_issues.category is 'Use-case category of the sessions; uncategorized until categorisation has run.';
comment on column v_analysis_issues.issues is 'Issues with this label and impact level (a session can have several).';
comment on column v_analysis_issues.sessions_affected is 'Sessions with at least one such issue.';
comment on column v_analysis_issues.analysed_sessions is 'Live sessions of this category whose analysis has been generated (the denominator of share_of_sessions).';
comment on column v_analysis_issues.share_of_sessions is 'sessions_affected / analysed_sessions (0 to 1).';

-- Action items per ISO week × org × type.
create view v_action_items as
select
    date_trunc('week', s.created_at at time zone 'UTC')::date as week,
    s.org_id,
    a.type,
    count(*) as action_items,
    count(distinct a.session_id collate "C") as sessions,
    count(*) filter (where a.issue_id is not null and a.issue_id <> '') as linked_to_issue
from session_action_items a
join sessions s on s.session_id = a.session_id
where s.deleted_at is null
group by 1, 2, 3;

comment on view v_action_items is 'Action items the AI analysis recommends, per ISO week (of the session''s created_at, UTC) × org × type, from live sessions. Every measure adds up across weeks and orgs.';
comment on column v_action_items.week is 'ISO week the sessions were created, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_action_items.org_id is 'Organization of the sessions.';
comment on column v_action_items.type is 'Kind of action: machine_setup, repo_config, knowledge, prompt_improvement, other (newer values kept as they come).';
comment on column v_action_items.action_items is 'Action items of this type.';
comment on column v_action_items.sessions is 'Sessions with at least one action item of this type.';
comment on column v_action_items.linked_to_issue is 'Of the action items, those that name the analysis issue they address.';

-- Every action item of a live session with its session link; newest sessions first.
create view v_latest_action_items as
select
    a.session_id,
    s.created_at as session_created_at,
    (s.created_at at time zone 'UTC')::date as day,
    date_trunc('week', s.created_at at time zone 'UTC')::date as week,
    s.org_id,
    coalesce(s.category, 'uncategorized') as category,
    s.title as session_title,
    s.url as session_url,
    a.position,
    a.type,
    a.action_item,
    a.issue_id,
    (select i.label from session_issues i
        where i.session_id = a.session_id and i.issue_id = a.issue_id and i.issue_id <> ''
        order by i.position limit 1) as issue_label
from session_action_items a
join sessions s on s.session_id = a.session_id
where s.deleted_at is null;

comment on view v_latest_action_items is 'One row per action item of a live session, with a link to the session. For the latest: order by session_created_at desc (and position) with a limit; filter on day, week or session_created_at for a period.';
comment on column v_latest_action_items.session_id is 'The session (v_sessions.session_id).';
comment on column v_latest_action_items.session_created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_latest_action_items.day is 'UTC calendar day the session was created (00:00 to 24:00 UTC).';
comment on column v_latest_action_items.week is 'ISO week the session was created, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_latest_action_items.org_id is 'Organization of the session.';
comment on column v_latest_action_items.category is 'Use-case category of the session; uncategorized until categorisation has run.';
comment on column v_latest_action_items.session_title is 'Title of the session, if any.';
comment on column v_latest_action_items.session_url is 'Link to the session in the Devin web app.';
comment on column v_latest_action_items.position is 'Index of the item in the analysis'' list, from 0.';
comment on column v_latest_action_items.type is 'Kind of action: machine_setup, repo_config, knowledge, prompt_improvement, other.';
comment on column v_latest_action_items.action_item is 'What to do.';
comment on column v_latest_action_items.issue_id is 'The analysis issue the item addresses, if any.';
comment on column v_latest_action_items.issue_label is 'Label of that issue (from the same session''s analysis), if the item names one.';

-- Sync health per source.
create view v_sync_health as
select
    src.source,
    st.watermark,
    to_timestamp(st.watermark) as watermark_at,
    floor(extract(epoch from now() - to_timestamp(st.watermark)))::bigint as lag_seconds,
    st.backfill_completed_at,
    last_run.run_id as last_run_id,
    last_run.mode as last_run_mode,
    last_run.status as last_run_status,
    last_run.started_at as last_run_started_at,
    last_run.finished_at as last_run_finished_at,
    last_run.error as last_run_error,
    last_ok.finished_at as last_success_at,
    day_runs.runs_24h,
    day_runs.failed_runs_24h,
    day_runs.sessions_upserted_24h,
    day_runs.retries_24h
from (select source from sync_state union select source from sync_runs) src
left join sync_state st on st.source = src.source
left join lateral (
    select r.run_id, r.mode, r.status, r.started_at, r.finished_at, r.error
    from sync_runs r
    where r.source = src.source
    order by r.started_at desc, r.run_id desc
    limit 1
) last_run on true
left join lateral (
    select r.finished_at
    from sync_runs r
    where r.source = src.source and r.status = 'succeeded'
    order by r.started_at desc, r.run_id desc
    limit 1
) last_ok on true
cross join lateral (
    select count(*) as runs_24h,
           count(*) filter (where r.status = 'failed') as failed_runs_24h,
           coalesce(sum(r.sessions_upserted), 0)::bigint as sessions_upserted_24h,
           coalesce(sum(r.retries), 0)::bigint as retries_24h
    from sync_runs r
    where r.source = src.source and r.started_at >= now() - interval '24 hours'
) day_runs;

comment on view v_sync_health is 'Health of the sync per source: how far the data reaches, how the last run went, and runs over the last 24 hours. Read it for alerting: lag_seconds growing or last_run_status failed.';
comment on column v_sync_health.source is 'Source name (config sync.source).';
comment on column v_sync_health.watermark is 'High-water mark of updated_at, Unix seconds of the API server''s clock; null before the first complete run.';
comment on column v_sync_health.watermark_at is 'The watermark as a timestamptz (UTC): changes up to about this time are in the warehouse.';
comment on column v_sync_health.lag_seconds is 'Seconds from watermark_at to now (database clock): how stale the warehouse may be. Includes the settle margin and the time since the last run.';
comment on column v_sync_health.backfill_completed_at is 'When the last backfill completed; null while one runs or if none ever ran.';
comment on column v_sync_health.last_run_id is 'The most recently started run (sync_runs.run_id).';
comment on column v_sync_health.last_run_mode is 'Its mode: incremental, backfill, enrichment or reconcile.';
comment on column v_sync_health.last_run_status is 'Its status: running, succeeded, failed or aborted.';
comment on column v_sync_health.last_run_started_at is 'When it started (UTC).';
comment on column v_sync_health.last_run_finished_at is 'When it ended (UTC); null while running or if the process died.';
comment on column v_sync_health.last_run_error is 'Why it failed, if it did.';
comment on column v_sync_health.last_success_at is 'When the most recent succeeded run ended (UTC).';
comment on column v_sync_health.runs_24h is 'Runs started in the last 24 hours (before now, database clock).';
comment on column v_sync_health.failed_runs_24h is 'Of those, runs that failed.';
comment on column v_sync_health.sessions_upserted_24h is 'Sessions those runs inserted or changed.';
comment on column v_sync_health.retries_24h is 'HTTP requests those runs had to retry.';
