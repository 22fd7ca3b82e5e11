-- History views (issue 12): time spent in each status, pull request lifecycles and ACUs burned per day, from
-- session_history and session_pull_request_history (20261201000003_history.sql).
--
-- Conventions of the BI views (20261129000010_bi_views.sql) hold here too:
--   * day = the UTC calendar day, week = the ISO week as the date of its Monday (00:00 UTC); they do not depend on
--     the connection's time zone; time is split at UTC midnight in proportion to how much of it falls on each day;
--   * soft-deleted sessions are left out with all their history, as every other view leaves them out (their ACUs
--     are not in v_daily_usage either). A session that comes back counts again; the period it was deleted is a
--     gap in its history (no status, and its next ACU increment is spread over the gap, see v_session_acus_daily);
--   * a missing category is 'uncategorized', a repository that cannot be parsed 'unknown'.
-- What the history can and cannot tell:
--   * it starts at the first sync: a session's first row is its state when this warehouse first saw it (valid_from
--     = its updated_at then); what happened before is unknown. A backfilled session that already ended has one row,
--     starting when it last changed;
--   * closed rows older than history.retention are pruned, so an old session may have lost its earliest rows:
--     its history then starts at its first kept row;
--   * a version starts when the change was observed (the session's updated_at when the change bumped it, else the
--     sync that saw it), so times are as precise as the sync schedule.
-- Cost: the views compute from the whole history of the sessions they keep, session by session through the history
-- tables' primary keys. A filter on the session (org_id, session_created_at, session_id) limits the sessions read; a
-- filter on day does not (a day's figures depend on periods and increments that started before it). Measured at
-- 200,000 sessions with 1,000,000 history rows on a busy 2-core VM: 0.6 s for one creation month of
-- v_session_status_time, 1 s for one org and month of v_acus_burned_daily, 3-5 s for all orgs; expect about five
-- times that at a million sessions. No index is added: the primary keys serve every lookup.

-- One row per status period of a live session: consecutive history rows (meeting exactly) with the same status
-- and status_detail form one period, whatever else changed (ACUs, category, analysis).
create view v_session_status_periods as
select
    s.session_id,
    s.org_id,
    s.created_at as session_created_at,
    p.period,
    p.status,
    p.status_detail,
    p.started_at,
    p.ended_at,
    p.ended_at is null as is_current,
    coalesce(p.ended_at, greatest(now(), p.started_at)) - p.started_at as duration,
    extract(epoch from coalesce(p.ended_at, greatest(now(), p.started_at)) - p.started_at)::double precision / 3600
        as hours,
    p.versions
from sessions s
-- per session (its history through the primary key): a filter on the session (org, created_at, id) reads only
-- the matching sessions' history
cross join lateral (
    select period, status, status_detail,
           min(valid_from) as started_at,
           -- the current row (valid_to null) is the period's last: the period is open
           case when count(valid_to) = count(*) then max(valid_to) end as ended_at,
           count(*) as versions
    from (
        select v.*, sum(v.opens_period) over (order by v.valid_from) as period
        from (
            select h.valid_from, h.valid_to, h.status, h.status_detail,
                   case when lag(h.valid_to) over w = h.valid_from
                             and lag(h.status) over w = h.status
                             and lag(h.status_detail) over w is not distinct from h.status_detail
                        then 0 else 1 end as opens_period
            from session_history h
            where h.session_id = s.session_id
            window w as (order by h.valid_from)
        ) v
    ) n
    group by period, status, status_detail
) p
where s.deleted_at is null;

comment on view v_session_status_periods is 'One row per status period of a live session, from session_history: consecutive versions that meet and have the same status and status_detail are one period (a change of ACUs, category or analysis does not end it). The current period runs until now. History starts at the first sync: the first period starts when the warehouse first saw the session (or at its first row kept by history.retention); earlier time is unknown. A deleted-then-revived session has a gap between its periods.';
comment on column v_session_status_periods.session_id is 'The session (v_sessions.session_id).';
comment on column v_session_status_periods.org_id is 'Organization of the session (now).';
comment on column v_session_status_periods.session_created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_session_status_periods.period is 'Number of the period within the session''s known history, from 1, in time order.';
comment on column v_session_status_periods.status is 'Session status during the period: new, claimed, running, exit, error, suspended, resuming (newer values kept as they come).';
comment on column v_session_status_periods.status_detail is 'Status detail during the period (e.g. working, waiting_for_user, waiting_for_approval, finished, or why it was suspended); null if none.';
comment on column v_session_status_periods.started_at is 'When the period started (the valid_from of its first version).';
comment on column v_session_status_periods.ended_at is 'When it ended (the next period''s start, or when the session was marked deleted); null while current.';
comment on column v_session_status_periods.is_current is 'Whether this is the session''s status now.';
comment on column v_session_status_periods.duration is 'Length of the period (interval); a current period is counted until now (database clock).';
comment on column v_session_status_periods.hours is 'The same duration in hours.';
comment on column v_session_status_periods.versions is 'History rows the period spans (more than 1 when other attributes changed meanwhile).';

-- Time in status per session: how long each session spent in each status and detail, over its known history.
create view v_session_status_time as
select
    session_id,
    org_id,
    session_created_at,
    status,
    status_detail,
    count(*) as periods,
    justify_hours(sum(duration)) as time_in_status,
    sum(hours) as hours,
    min(started_at) as first_started_at,
    bool_or(is_current) as is_current
from v_session_status_periods
group by session_id, org_id, session_created_at, status, status_detail;

comment on view v_session_status_time is 'Time each live session spent in each status and status detail over its known history (since the first sync, see v_session_status_periods), the current period counted until now. For "how long do sessions wait for a person": status running with status_detail waiting_for_user or waiting_for_approval. Sum over status_detail for the time in a status.';
comment on column v_session_status_time.session_id is 'The session (v_sessions.session_id).';
comment on column v_session_status_time.org_id is 'Organization of the session (now).';
comment on column v_session_status_time.session_created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_session_status_time.status is 'Session status (new, claimed, running, exit, error, suspended, resuming, …).';
comment on column v_session_status_time.status_detail is 'Status detail (working, waiting_for_user, …); null if none.';
comment on column v_session_status_time.periods is 'Separate periods the session spent in this status and detail.';
comment on column v_session_status_time.time_in_status is 'Total time in it (interval, days of 24 hours); the current period counted until now.';
comment on column v_session_status_time.hours is 'The same total in hours.';
comment on column v_session_status_time.first_started_at is 'When the session first entered this status and detail (within its known history).';
comment on column v_session_status_time.is_current is 'Whether the session is in this status and detail now.';

-- Time in status per UTC day × org × status × detail. Closed periods are split day by day; an open period is split
-- only on its first day, and its later days (every day up to today, in full, today until now) come from a running
-- count per group: a session that ended long ago sits in its last status on every day since, and one row per
-- session and day would be hundreds of millions of rows at a million sessions.
create view v_status_time_daily as
with periods as (
    select org_id, session_id, status, status_detail, ended_at,
           -- an open period that starts ahead of the database clock counts from now
           case when ended_at is null then least(started_at, now()) else started_at end as span_from,
           coalesce(ended_at, now()) as span_to
    from v_session_status_periods
),
today as (
    select (now() at time zone 'UTC')::date as day
),
parts as (
    -- closed periods on each of their days, open periods on their first day
    select p.org_id, p.session_id, p.status, p.status_detail, g.day::date as day,
           extract(epoch from least(p.span_to, (g.day + interval '1 day') at time zone 'UTC')
                              - greatest(p.span_from, g.day at time zone 'UTC'))::double precision as seconds
    from periods p
    cross join lateral generate_series(
        (p.span_from at time zone 'UTC')::date::timestamp,
        (case when p.ended_at is null then p.span_from else p.span_to end at time zone 'UTC')::date::timestamp,
        interval '1 day') as g(day)
),
open_starts as (
    select org_id, status, status_detail, (span_from at time zone 'UTC')::date as first_day, count(*) as n
    from periods
    where ended_at is null
    group by 1, 2, 3, 4
),
open_tail as (
    -- sessions in an open period that started before the day: a running sum over a dense calendar per group
    select org_id, status, status_detail, day,
           sum(sum(n)) over (partition by org_id, status, status_detail order by day) as sessions
    from (
        select org_id, status, status_detail, first_day + 1 as day, n from open_starts
        union all
        select g.org_id, g.status, g.status_detail, d.day::date, 0
        from (select org_id, status, status_detail, min(first_day) as first_day from open_starts group by 1, 2, 3) g
        cross join today t
        cross join lateral generate_series((g.first_day + 1)::timestamp, t.day::timestamp, interval '1 day') as d(day)
    ) e
    group by org_id, status, status_detail, day
),
per_day as (
    select day, org_id, status, status_detail, sum(seconds) as seconds,
           count(distinct session_id collate "C") as sessions
    from parts
    where seconds > 0
    group by 1, 2, 3, 4
    union all
    select o.day, o.org_id, o.status, o.status_detail,
           o.sessions * extract(epoch from least(now(), (o.day + interval '1 day') at time zone 'UTC')
                                           - o.day::timestamp at time zone 'UTC')::double precision,
           o.sessions
    from open_tail o
    cross join today t
    where o.day <= t.day and o.sessions > 0
)
select
    day,
    org_id,
    status,
    status_detail,
    justify_hours(make_interval(secs => sum(seconds))) as time_in_status,
    sum(seconds) / 3600 as hours,
    sum(sessions)::bigint as sessions
from per_day
group by day, org_id, status, status_detail;

comment on view v_status_time_daily is 'Time live sessions spent in each status and status detail per UTC day × org, from their status periods (v_session_status_periods) split at UTC midnight; current periods run until now, so today is partial and a session that ended stays in its last status (exit, error, often suspended) every day since: leave those statuses out when asking where active time goes. Adds up across days and orgs (hours; sessions only within a day). History starts at the first sync: days before it have no rows.';
comment on column v_status_time_daily.day is 'UTC calendar day (00:00 to 24:00 UTC).';
comment on column v_status_time_daily.org_id is 'Organization of the sessions (now).';
comment on column v_status_time_daily.status is 'Session status (new, claimed, running, exit, error, suspended, resuming, …).';
comment on column v_status_time_daily.status_detail is 'Status detail (working, waiting_for_user, …); null if none.';
comment on column v_status_time_daily.time_in_status is 'Session-time spent in this status and detail during the day (interval): at most 24 hours per session.';
comment on column v_status_time_daily.hours is 'The same in hours (session-hours).';
comment on column v_status_time_daily.sessions is 'Sessions that spent some time in this status and detail during the day.';

-- The repository of a PR URL, parsed the way the loader parses it (sync::normalize::parse_pr_url): GitLab
-- host/group/…/project/-/merge_requests/N and GitHub host/owner/name/pull/N. For PRs that are no longer on their
-- session (session_pull_requests has their repo otherwise).
create function pr_url_repo(pr_url text) returns text
language sql immutable parallel safe
as $$
    select case
        -- the segments before /-/merge_requests, if there are at least two
        when mr > 0 then case when strpos(substr(path, 2, greatest(mr - 2, 0)), '/') > 0 then substr(path, 2, mr - 2) end
        when host like '%github%' and path ~ '^/[^/]+/[^/]+/pull/[^/]+' then
            split_part(path, '/', 2) || '/' || split_part(path, '/', 3)
    end
    from (select host, path, strpos(path || '/', '/-/merge_requests/') as mr
          from (select lower(split_part(split_part(authority, '@', -1), ':', 1)) as host,
                       -- the path without query and fragment, empty segments dropped (as url's path_segments)
                       regexp_replace(split_part(split_part(substr(rest, length(authority) + 1), '?', 1), '#', 1),
                                      '/+', '/', 'g') as path
                from (select rest, split_part(rest, '/', 1) as authority
                      from (select substring(pr_url from '^[A-Za-z][A-Za-z0-9+.-]*://(.*)$') as rest) r) a) u) x
$$;

comment on function pr_url_repo(text) is 'Repository (owner/name, GitLab group/…/project) of a GitHub or GitLab pull / merge request URL, as the loader parses it into session_pull_requests.repo; null for other URLs.';

-- One row per pull request of a live session over its known history.
create view v_pull_request_lifecycle as
with prs as (
    select h.session_id, h.pr_url,
           min(h.valid_from) as first_seen_at,
           min(h.valid_from) filter (where h.pr_state = 'open') as first_open_at,
           min(h.valid_from) filter (where h.pr_state = 'merged') as first_merged_at,
           min(h.valid_from) filter (where h.pr_state = 'closed') as first_closed_at,
           bool_or(h.valid_to is null) as is_present,
           (array_agg(h.pr_state) filter (where h.valid_to is null))[1] as current_state,
           (array_agg(h.pr_state order by h.valid_from desc))[1] as last_state,
           max(h.valid_to) as last_valid_to,
           count(*) as states
    from session_pull_request_history h
    group by h.session_id, h.pr_url
)
select
    x.session_id,
    x.pr_url,
    -- parsed again only for a PR no longer on its session (or one whose URL has no repository anyway)
    coalesce(p.repo, pr_url_repo(x.pr_url), 'unknown') as repo,
    s.org_id,
    s.created_at as session_created_at,
    x.first_seen_at,
    x.first_open_at,
    x.first_merged_at,
    x.first_closed_at,
    x.current_state,
    x.is_present,
    x.last_state,
    case when not x.is_present then x.last_valid_to end as gone_at,
    x.states,
    x.first_seen_at < x.first_merged_at as merge_observed,
    x.first_merged_at - s.created_at as time_to_merge,
    extract(epoch from x.first_merged_at - s.created_at)::double precision / 3600 as hours_to_merge,
    extract(epoch from x.first_merged_at - s.created_at)::double precision / 86400 as days_to_merge
from prs x
join sessions s on s.session_id = x.session_id
left join session_pull_requests p on p.session_id = x.session_id and p.pr_url = x.pr_url
where s.deleted_at is null;

comment on view v_pull_request_lifecycle is 'One row per pull request of a live session (session × PR URL) over its known history (session_pull_request_history): when it was first seen in any state, open, merged and closed, its state now, and the time from the session''s start to its merge. History starts at the first sync: a PR already merged then has first_merged_at = when the warehouse first saw it (merge_observed false), an upper bound of the real merge time; filter on merge_observed for true merge times. Closed rows older than history.retention may have been pruned.';
comment on column v_pull_request_lifecycle.session_id is 'The session (v_sessions.session_id).';
comment on column v_pull_request_lifecycle.pr_url is 'URL of the pull / merge request.';
comment on column v_pull_request_lifecycle.repo is 'Repository as owner/name (GitLab: group/project); unknown for PR URLs on other hosts.';
comment on column v_pull_request_lifecycle.org_id is 'Organization of the session (now).';
comment on column v_pull_request_lifecycle.session_created_at is 'When the session was created (timestamptz, UTC).';
comment on column v_pull_request_lifecycle.first_seen_at is 'When the warehouse first saw the PR on the session, in any state (its first kept history row).';
comment on column v_pull_request_lifecycle.first_open_at is 'When it was first seen open; null if never seen open.';
comment on column v_pull_request_lifecycle.first_merged_at is 'When it was first seen merged; null if never.';
comment on column v_pull_request_lifecycle.first_closed_at is 'When it was first seen closed (without merge); null if never.';
comment on column v_pull_request_lifecycle.current_state is 'Its state now (open, merged, closed, what the API sends, or null if unknown); null also when the PR is no longer on the session (see is_present).';
comment on column v_pull_request_lifecycle.is_present is 'Whether the session still lists the PR.';
comment on column v_pull_request_lifecycle.last_state is 'The last state seen: the current one, or the one it had when it disappeared.';
comment on column v_pull_request_lifecycle.gone_at is 'When the PR disappeared from the session; null while present.';
comment on column v_pull_request_lifecycle.states is 'Recorded states (history rows) of the PR.';
comment on column v_pull_request_lifecycle.merge_observed is 'Whether the merge happened while the warehouse watched (the PR was seen in another state first): first_merged_at is then the merge time, to the sync''s precision. False when first seen already merged (first_merged_at only an upper bound); null if never merged.';
comment on column v_pull_request_lifecycle.time_to_merge is 'first_merged_at − session_created_at (interval); null if never merged.';
comment on column v_pull_request_lifecycle.hours_to_merge is 'The same in hours.';
comment on column v_pull_request_lifecycle.days_to_merge is 'The same in days of 24 hours.';

-- ACUs burned per session and UTC day, from the history's increments of the cumulative acus_consumed.
create view v_session_acus_daily as
with spans as (
    -- each increment over the time it was burned in; the first kept version's whole count since creation
    select s.session_id, s.org_id, s.user_id, coalesce(s.user_id, s.service_user_id) as started_by,
           coalesce(s.category, 'uncategorized') as category, v.increment, v.valid_from as span_to,
           least(coalesce(v.previous_from, s.created_at), v.valid_from) as span_from
    from sessions s
    -- per session, as in v_session_status_periods: a filter on the session reads only its history
    cross join lateral (
        select h.valid_from,
               lag(h.valid_from) over w as previous_from,
               h.acus_consumed - coalesce(lag(h.acus_consumed) over w, 0) as increment
        from session_history h
        where h.session_id = s.session_id
        window w as (order by h.valid_from)
    ) v
    where s.deleted_at is null and v.increment <> 0
),
parts as (
    select sp.session_id, sp.org_id, sp.user_id, sp.started_by, sp.category, g.day::date as day,
           case when sp.span_to = sp.span_from then sp.increment
                else sp.increment
                     * (extract(epoch from least(sp.span_to, (g.day + interval '1 day') at time zone 'UTC')
                                           - greatest(sp.span_from, g.day at time zone 'UTC'))
                        / extract(epoch from sp.span_to - sp.span_from))::double precision
           end as acus
    from spans sp
    cross join lateral generate_series((sp.span_from at time zone 'UTC')::date::timestamp,
                                       (sp.span_to at time zone 'UTC')::date::timestamp, interval '1 day') as g(day)
    -- a span ending at midnight has nothing on the day it ends
    where sp.span_to = sp.span_from or sp.span_to > g.day at time zone 'UTC'
)
select
    session_id,
    day,
    date_trunc('week', day)::date as week,
    org_id,
    user_id,
    started_by,
    category,
    sum(acus) as acus
from parts
group by session_id, day, org_id, user_id, started_by, category;

comment on view v_session_acus_daily is 'ACUs each live session burned per UTC day, from session_history. For a session''s versions v0..vn (by valid_from) with cumulative acus_consumed a0..an, increment i ≥ 1 (a_i − a_(i−1)) is spread uniformly over [valid_from_(i−1), valid_from_i]; a0 of the first kept version (history before the first sync, or pruned by history.retention, is unknown) is spread over [sessions.created_at, valid_from_0], all on valid_from_0''s day when that interval is empty or negative. Time is split at UTC midnight in proportion. Negative increments are kept, so a session''s rows add up to its current acus_consumed (up to float rounding). Org, user and category are the session''s current ones (sessions), not those of the time. Soft-deleted sessions are left out; a revived session''s increment after its deleted period is spread over the gap. Only days with a non-zero increment have a row.';
comment on column v_session_acus_daily.session_id is 'The session (v_sessions.session_id).';
comment on column v_session_acus_daily.day is 'UTC calendar day the ACUs were burned (00:00 to 24:00 UTC).';
comment on column v_session_acus_daily.week is 'ISO week of that day, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_session_acus_daily.org_id is 'Organization of the session (now).';
comment on column v_session_acus_daily.user_id is 'User who started the session; null when a service user did.';
comment on column v_session_acus_daily.started_by is 'Who started the session: the user id, else the service user id; null when the API names neither.';
comment on column v_session_acus_daily.category is 'Use-case category of the session now; uncategorized until categorisation has run.';
comment on column v_session_acus_daily.acus is 'ACUs burned that day (its share of the session''s increments; negative if the API lowered the count).';

create view v_acus_burned_daily as
select day, week, org_id, user_id, started_by, category, sum(acus) as acus, count(*) as sessions
from v_session_acus_daily
group by day, week, org_id, user_id, started_by, category;

comment on view v_acus_burned_daily is 'ACUs burned per UTC day × org × user × category, by live sessions, spread over the days they ran (see v_session_acus_daily for the definition). Unlike v_daily_usage (all of a session''s ACUs on the day it was created), this puts ACUs on the days they were burned. Org, user and category are the sessions'' current ones. acus adds up across rows; over all days it equals the sessions'' acus_consumed.';
comment on column v_acus_burned_daily.day is 'UTC calendar day (00:00 to 24:00 UTC).';
comment on column v_acus_burned_daily.week is 'ISO week of the day, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_acus_burned_daily.org_id is 'Organization of the sessions.';
comment on column v_acus_burned_daily.user_id is 'User who started the sessions; null when a service user did.';
comment on column v_acus_burned_daily.started_by is 'Who started the sessions: the user id, else the service user id; null when the API names neither.';
comment on column v_acus_burned_daily.category is 'Use-case category of the sessions now; uncategorized until categorisation has run.';
comment on column v_acus_burned_daily.acus is 'ACUs burned that day.';
comment on column v_acus_burned_daily.sessions is 'Sessions that burned ACUs that day (a share of a non-zero increment falls on it); does not add up across days.';

create view v_acus_burned_weekly as
select week, org_id, user_id, started_by, category, sum(acus) as acus,
       count(distinct session_id collate "C") as sessions
from v_session_acus_daily
group by week, org_id, user_id, started_by, category;

comment on view v_acus_burned_weekly is 'ACUs burned per ISO week × org × user × category, by live sessions, spread over the days they ran (see v_session_acus_daily for the definition). Org, user and category are the sessions'' current ones. acus adds up across rows.';
comment on column v_acus_burned_weekly.week is 'ISO week, as the date of its Monday: Monday 00:00 UTC to the next Monday 00:00 UTC.';
comment on column v_acus_burned_weekly.org_id is 'Organization of the sessions.';
comment on column v_acus_burned_weekly.user_id is 'User who started the sessions; null when a service user did.';
comment on column v_acus_burned_weekly.started_by is 'Who started the sessions: the user id, else the service user id; null when the API names neither.';
comment on column v_acus_burned_weekly.category is 'Use-case category of the sessions now; uncategorized until categorisation has run.';
comment on column v_acus_burned_weekly.acus is 'ACUs burned that week.';
comment on column v_acus_burned_weekly.sessions is 'Sessions that burned ACUs that week; does not add up across weeks.';
