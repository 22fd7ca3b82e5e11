-- Rollups (issue 14, item 4): per-day aggregates of live sessions that the dashboard views read instead of the base
-- tables, so that a query over the whole history reads thousands of rows, not millions.
--
-- How they stay exact: rollup_session_contributions records, per live session, what it was last counted as (its
-- keys, measures and child rows). rollup_apply(ids) compares that with what the sessions are now
-- (rollup_current_contributions), adds the difference to every rollup and records the new state. The loader calls
-- it in the transaction that writes a batch, for the sessions it wrote; a reconcile calls it for the sessions it
-- marks deleted (a deleted session contributes nothing, so its contribution is subtracted); a revived session is
-- written again and so added back. The rollups are never rebuilt from scratch: this migration fills them once
-- from the existing tables.
--
-- Every rollup is per UTC day (of the session's created_at, as the views bucket) and org: backfill windows by
-- created_at touch different rows, so concurrent windows do not wait on each other's row locks. Keys follow the
-- views' conventions (origin 'unknown', category 'uncategorized', repo 'unknown', impact_level()). A row whose
-- sessions dropped to 0 is kept (with zeros everywhere); the views leave such rows out.

create table rollup_session_contributions (
    session_id text not null,
    day date not null,
    org_id text not null,
    origin text not null,
    category text not null,
    started_by text,
    started_by_kind text not null,
    session_size text not null,
    acus double precision not null,
    user_messages bigint not null,
    devin_messages bigint not null,
    has_analysis boolean not null,
    pr_repos text[] not null,
    pr_states text[] not null,
    issue_labels text[] not null,
    issue_levels text[] not null,
    action_types text[] not null,
    action_linked boolean[] not null,
    action_issue_labels text[] not null,
    constraint rollup_session_contributions_pkey primary key (session_id)
);

comment on table rollup_session_contributions is 'Bookkeeping of the rollups: one row per live session with what it is counted as in the rollup_daily_* tables (its keys, measures and child rows when last applied). rollup_apply() subtracts this and adds the session''s current contribution; a soft-deleted session has no row.';
comment on column rollup_session_contributions.session_id is 'The session (sessions.session_id).';
comment on column rollup_session_contributions.day is 'UTC calendar day of the session''s created_at.';
comment on column rollup_session_contributions.org_id is 'Organization of the session.';
comment on column rollup_session_contributions.origin is 'Origin; unknown when the API gives none.';
comment on column rollup_session_contributions.category is 'Category; uncategorized when the API gives none.';
comment on column rollup_session_contributions.started_by is 'User id, else service user id; null when neither.';
comment on column rollup_session_contributions.started_by_kind is 'user, service_user or unknown (as v_sessions.started_by_kind).';
comment on column rollup_session_contributions.session_size is 'Size class (xs, s, m, l, xl).';
comment on column rollup_session_contributions.acus is 'ACUs consumed.';
comment on column rollup_session_contributions.user_messages is 'Messages the user sent.';
comment on column rollup_session_contributions.devin_messages is 'Messages Devin sent.';
comment on column rollup_session_contributions.has_analysis is 'Whether the analysis has been generated.';
comment on column rollup_session_contributions.pr_repos is 'Repository of each pull request (unknown if unparsed), ordered by pr_url.';
comment on column rollup_session_contributions.pr_states is 'State of each pull request, in the order of pr_repos.';
comment on column rollup_session_contributions.issue_labels is 'Label of each analysis issue, by position.';
comment on column rollup_session_contributions.issue_levels is 'Impact level (impact_level()) of each analysis issue, by position.';
comment on column rollup_session_contributions.action_types is 'Type of each action item, by position.';
comment on column rollup_session_contributions.action_linked is 'Whether each action item names an issue (issue_id not null or empty).';
comment on column rollup_session_contributions.action_issue_labels is 'Label of the issue each action item names, as v_latest_action_items.issue_label (null if none).';

-- What every live session contributes now, computed from the base tables: the same columns as
-- rollup_session_contributions. A filter on session_id reads only those sessions (through the primary keys).
create view rollup_current_contributions as
select
    s.session_id,
    (s.created_at at time zone 'UTC')::date as day,
    s.org_id,
    coalesce(s.origin, 'unknown') as origin,
    coalesce(s.category, 'uncategorized') as category,
    coalesce(s.user_id, s.service_user_id) as started_by,
    case
        when s.user_id is not null then 'user'
        when s.service_user_id is not null then 'service_user'
        else 'unknown'
    end as started_by_kind,
    s.session_size,
    s.acus_consumed as acus,
    s.num_user_messages as user_messages,
    s.num_devin_messages as devin_messages,
    s.has_analysis,
    p.repos as pr_repos,
    p.states as pr_states,
    i.labels as issue_labels,
    i.levels as issue_levels,
    a.types as action_types,
    a.linked as action_linked,
    a.issue_labels as action_issue_labels
from sessions s
cross join lateral (
    select coalesce(array_agg(coalesce(p.repo, 'unknown') order by p.pr_url), '{}'),
           coalesce(array_agg(p.pr_state order by p.pr_url), '{}')
    from session_pull_requests p
    where p.session_id = s.session_id
) p(repos, states)
cross join lateral (
    select coalesce(array_agg(i.label order by i.position), '{}'),
           coalesce(array_agg(impact_level(i.impact) order by i.position), '{}')
    from session_issues i
    where i.session_id = s.session_id
) i(labels, levels)
cross join lateral (
    select coalesce(array_agg(a.type order by a.position), '{}'),
           coalesce(array_agg(a.issue_id is not null and a.issue_id <> '' order by a.position), '{}'),
           coalesce(array_agg(
               (select i.label from session_issues i
                where i.session_id = a.session_id and i.issue_id = a.issue_id and i.issue_id <> ''
                order by i.position limit 1)
               order by a.position), '{}')
    from session_action_items a
    where a.session_id = s.session_id
) a(types, linked, issue_labels)
where s.deleted_at is null;

comment on view rollup_current_contributions is 'What each live session contributes to the rollups now, from the base tables (same columns as rollup_session_contributions). Internal to the rollups; filter on session_id.';
-- Its columns mean what the bookkeeping's columns mean.
do $$
declare
    c record;
begin
    for c in
        select a.attname, col_description(a.attrelid, a.attnum) as description
        from pg_attribute a
        where a.attrelid = 'rollup_session_contributions'::regclass and a.attnum > 0 and not a.attisdropped
    loop
        execute format('comment on column rollup_current_contributions.%I is %L', c.attname, c.description);
    end loop;
end
$$;

-- The measures shared by the two session rollups.
create table rollup_daily_usage (
    day date not null,
    org_id text not null,
    origin text not null,
    category text not null,
    sessions bigint not null,
    acus numeric not null,
    user_messages numeric not null,
    devin_messages numeric not null,
    sessions_with_pr bigint not null,
    sessions_with_merged_pr bigint not null,
    sessions_with_analysis bigint not null,
    prs bigint not null,
    merged_prs bigint not null,
    constraint rollup_daily_usage_pkey primary key (day, org_id, origin, category)
);

comment on table rollup_daily_usage is 'Live sessions per UTC day (of created_at) × org × origin × category, maintained with every write (the rows behind v_daily_usage). Measures add up across rows. Rows whose sessions fell to 0 stay, all zero.';
comment on column rollup_daily_usage.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_usage.org_id is 'Organization.';
comment on column rollup_daily_usage.origin is 'Origin; unknown when the API gives none.';
comment on column rollup_daily_usage.category is 'Category; uncategorized until categorisation has run.';
comment on column rollup_daily_usage.sessions is 'Live sessions.';
comment on column rollup_daily_usage.acus is 'Their ACUs (numeric, so that adding and subtracting stays exact).';
comment on column rollup_daily_usage.user_messages is 'Messages users sent in them.';
comment on column rollup_daily_usage.devin_messages is 'Messages Devin sent in them.';
comment on column rollup_daily_usage.sessions_with_pr is 'Of them, sessions with at least one pull request.';
comment on column rollup_daily_usage.sessions_with_merged_pr is 'Of them, sessions with at least one merged pull request.';
comment on column rollup_daily_usage.sessions_with_analysis is 'Of them, sessions whose analysis has been generated.';
comment on column rollup_daily_usage.prs is 'Pull requests of those sessions (any state).';
comment on column rollup_daily_usage.merged_prs is 'Of those, pull requests whose state is merged.';

create table rollup_daily_starters (
    day date not null,
    org_id text not null,
    started_by_kind text not null,
    started_by text,
    session_size text not null,
    sessions bigint not null,
    acus numeric not null,
    user_messages numeric not null,
    devin_messages numeric not null,
    sessions_with_pr bigint not null,
    sessions_with_merged_pr bigint not null,
    sessions_with_analysis bigint not null,
    prs bigint not null,
    merged_prs bigint not null,
    -- started_by is null for sessions that name neither a user nor a service user
    constraint rollup_daily_starters_key unique nulls not distinct (day, org_id, started_by_kind, started_by, session_size)
);

comment on table rollup_daily_starters is 'Live sessions per UTC day (of created_at) × org × who started them × session size, maintained with every write (the rows behind v_daily_starters). Measures add up across rows. Rows whose sessions fell to 0 stay, all zero.';
comment on column rollup_daily_starters.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_starters.org_id is 'Organization.';
comment on column rollup_daily_starters.started_by_kind is 'user, service_user or unknown (as v_sessions.started_by_kind).';
comment on column rollup_daily_starters.started_by is 'User id, else service user id; null when the API names neither.';
comment on column rollup_daily_starters.session_size is 'Size class: xs, s, m, l, xl.';
comment on column rollup_daily_starters.sessions is 'Live sessions.';
comment on column rollup_daily_starters.acus is 'Their ACUs (numeric, so that adding and subtracting stays exact).';
comment on column rollup_daily_starters.user_messages is 'Messages users sent in them.';
comment on column rollup_daily_starters.devin_messages is 'Messages Devin sent in them.';
comment on column rollup_daily_starters.sessions_with_pr is 'Of them, sessions with at least one pull request.';
comment on column rollup_daily_starters.sessions_with_merged_pr is 'Of them, sessions with at least one merged pull request.';
comment on column rollup_daily_starters.sessions_with_analysis is 'Of them, sessions whose analysis has been generated.';
comment on column rollup_daily_starters.prs is 'Pull requests of those sessions (any state).';
comment on column rollup_daily_starters.merged_prs is 'Of those, pull requests whose state is merged.';

create table rollup_daily_pull_requests (
    day date not null,
    org_id text not null,
    repo text not null,
    prs bigint not null,
    merged bigint not null,
    closed bigint not null,
    open bigint not null,
    unknown bigint not null,
    constraint rollup_daily_pull_requests_pkey primary key (day, org_id, repo)
);

comment on table rollup_daily_pull_requests is 'Pull requests of live sessions per UTC day (of the session''s created_at) × org × repository, by current state (the rows behind v_pull_request_outcomes). Counts add up across rows.';
comment on column rollup_daily_pull_requests.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_pull_requests.org_id is 'Organization of the sessions.';
comment on column rollup_daily_pull_requests.repo is 'Repository as owner/name; unknown for PR URLs on other hosts.';
comment on column rollup_daily_pull_requests.prs is 'Pull requests (any state).';
comment on column rollup_daily_pull_requests.merged is 'Of them, state merged.';
comment on column rollup_daily_pull_requests.closed is 'Of them, state closed.';
comment on column rollup_daily_pull_requests.open is 'Of them, state open.';
comment on column rollup_daily_pull_requests.unknown is 'Of them, state null or another value.';

create table rollup_daily_issues (
    day date not null,
    org_id text not null,
    category text not null,
    label text not null,
    impact_level text not null,
    issues bigint not null,
    sessions bigint not null,
    constraint rollup_daily_issues_pkey primary key (day, org_id, category, label, impact_level)
);

comment on table rollup_daily_issues is 'Analysis issues of live sessions per UTC day (of the session''s created_at) × org × category × label × impact level (the rows behind v_daily_issues and v_analysis_issues). issues adds up across rows; sessions (sessions with at least one such issue) adds up across days, orgs and categories, not across labels or levels.';
comment on column rollup_daily_issues.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_issues.org_id is 'Organization of the sessions.';
comment on column rollup_daily_issues.category is 'Category of the sessions; uncategorized until categorisation has run.';
comment on column rollup_daily_issues.label is 'Issue label.';
comment on column rollup_daily_issues.impact_level is 'critical, high, medium, low or other (impact_level()).';
comment on column rollup_daily_issues.issues is 'Issues with this label and level.';
comment on column rollup_daily_issues.sessions is 'Sessions with at least one such issue.';

create table rollup_daily_issue_levels (
    day date not null,
    org_id text not null,
    category text not null,
    impact_level text not null,
    issues bigint not null,
    sessions bigint not null,
    constraint rollup_daily_issue_levels_pkey primary key (day, org_id, category, impact_level)
);

comment on table rollup_daily_issue_levels is 'Analysis issues of live sessions per UTC day × org × category × impact level, any label (rollup_daily_issues cannot answer "sessions with an issue of this level": its sessions do not add up across labels).';
comment on column rollup_daily_issue_levels.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_issue_levels.org_id is 'Organization of the sessions.';
comment on column rollup_daily_issue_levels.category is 'Category of the sessions; uncategorized until categorisation has run.';
comment on column rollup_daily_issue_levels.impact_level is 'critical, high, medium, low or other (impact_level()).';
comment on column rollup_daily_issue_levels.issues is 'Issues of this level.';
comment on column rollup_daily_issue_levels.sessions is 'Sessions with at least one issue of this level.';

create table rollup_daily_action_items (
    day date not null,
    org_id text not null,
    type text not null,
    issue_label text,
    action_items bigint not null,
    sessions bigint not null,
    linked_to_issue bigint not null,
    constraint rollup_daily_action_items_key unique nulls not distinct (day, org_id, type, issue_label)
);

comment on table rollup_daily_action_items is 'Action items of live sessions per UTC day (of the session''s created_at) × org × type × label of the issue they name (the rows behind v_daily_action_items). action_items and linked_to_issue add up across rows; sessions across days and orgs only, not across issue labels (per type: rollup_daily_action_item_types).';
comment on column rollup_daily_action_items.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_action_items.org_id is 'Organization of the sessions.';
comment on column rollup_daily_action_items.type is 'Action item type.';
comment on column rollup_daily_action_items.issue_label is 'Label of the analysis issue the items name (as v_latest_action_items.issue_label); null when they name none.';
comment on column rollup_daily_action_items.action_items is 'Action items.';
comment on column rollup_daily_action_items.sessions is 'Sessions with at least one such item.';
comment on column rollup_daily_action_items.linked_to_issue is 'Of the items, those with an issue_id (not empty).';

create table rollup_daily_action_item_types (
    day date not null,
    org_id text not null,
    type text not null,
    action_items bigint not null,
    sessions bigint not null,
    linked_to_issue bigint not null,
    constraint rollup_daily_action_item_types_pkey primary key (day, org_id, type)
);

comment on table rollup_daily_action_item_types is 'Action items of live sessions per UTC day (of the session''s created_at) × org × type (the rows behind v_action_items). Every measure adds up across days and orgs.';
comment on column rollup_daily_action_item_types.day is 'UTC calendar day the sessions were created.';
comment on column rollup_daily_action_item_types.org_id is 'Organization of the sessions.';
comment on column rollup_daily_action_item_types.type is 'Action item type.';
comment on column rollup_daily_action_item_types.action_items is 'Action items.';
comment on column rollup_daily_action_item_types.sessions is 'Sessions with at least one item of this type.';
comment on column rollup_daily_action_item_types.linked_to_issue is 'Of the items, those with an issue_id (not empty).';

-- Brings the rollups up to date for the sessions `ids`: for each whose current contribution differs from the one
-- recorded, subtracts the recorded one, adds the current one (none for a deleted or missing session) and records
-- it. One statement; sessions that did not change cost a lookup and no write. Rows are upserted in key order, so
-- two transactions meeting on a row wait rather than deadlock (and a deadlock would be retried by the loader).
-- Returns how many sessions changed.
create function rollup_apply(ids text[]) returns bigint
language plpgsql
as $$
declare
    changed bigint;
begin
    with old as (
        select * from rollup_session_contributions where session_id = any(ids)
    ),
    cur as (
        select * from rollup_current_contributions where session_id = any(ids)
    ),
    diff as (
        select c.session_id from cur c left join old o using (session_id) where row(o.*) is distinct from row(c.*)
        union
        select o.session_id from old o where not exists (select 1 from cur c where c.session_id = o.session_id)
    ),
    recorded as (
        insert into rollup_session_contributions as r
        select c.* from cur c join diff d using (session_id)
        on conflict (session_id) do update
        set day = excluded.day, org_id = excluded.org_id, origin = excluded.origin, category = excluded.category,
            started_by = excluded.started_by, started_by_kind = excluded.started_by_kind,
            session_size = excluded.session_size, acus = excluded.acus, user_messages = excluded.user_messages,
            devin_messages = excluded.devin_messages, has_analysis = excluded.has_analysis,
            pr_repos = excluded.pr_repos, pr_states = excluded.pr_states, issue_labels = excluded.issue_labels,
            issue_levels = excluded.issue_levels, action_types = excluded.action_types,
            action_linked = excluded.action_linked, action_issue_labels = excluded.action_issue_labels
    ),
    forgotten as (
        delete from rollup_session_contributions r
        using diff d
        where r.session_id = d.session_id and not exists (select 1 from cur c where c.session_id = d.session_id)
    ),
    signed as (
        select 1 as sign, c.* from cur c join diff d using (session_id)
        union all
        select -1 as sign, o.* from old o join diff d using (session_id)
    ),
    measured as (
        select day, org_id, origin, category, started_by, started_by_kind, session_size,
               sign as sessions,
               sign * acus::numeric as acus,
               sign * user_messages::numeric as user_messages,
               sign * devin_messages::numeric as devin_messages,
               sign * (cardinality(pr_repos) > 0)::int as sessions_with_pr,
               sign * (array_position(pr_states, 'merged') is not null)::int as sessions_with_merged_pr,
               sign * has_analysis::int as sessions_with_analysis,
               sign * cardinality(pr_repos) as prs,
               sign * cardinality(array_positions(pr_states, 'merged')) as merged_prs
        from signed
    ),
    usage as (
        insert into rollup_daily_usage as r
        select day, org_id, origin, category, sum(sessions), sum(acus), sum(user_messages), sum(devin_messages),
               sum(sessions_with_pr), sum(sessions_with_merged_pr), sum(sessions_with_analysis), sum(prs),
               sum(merged_prs)
        from measured
        group by day, org_id, origin, category
        having (sum(sessions), sum(acus), sum(user_messages), sum(devin_messages), sum(prs), sum(merged_prs),
                sum(sessions_with_pr), sum(sessions_with_merged_pr), sum(sessions_with_analysis))
               is distinct from (0, 0, 0, 0, 0, 0, 0, 0, 0)
        order by day, org_id, origin, category
        on conflict (day, org_id, origin, category) do update
        set sessions = r.sessions + excluded.sessions, acus = r.acus + excluded.acus,
            user_messages = r.user_messages + excluded.user_messages,
            devin_messages = r.devin_messages + excluded.devin_messages,
            sessions_with_pr = r.sessions_with_pr + excluded.sessions_with_pr,
            sessions_with_merged_pr = r.sessions_with_merged_pr + excluded.sessions_with_merged_pr,
            sessions_with_analysis = r.sessions_with_analysis + excluded.sessions_with_analysis,
            prs = r.prs + excluded.prs, merged_prs = r.merged_prs + excluded.merged_prs
    ),
    starters as (
        insert into rollup_daily_starters as r
        select day, org_id, started_by_kind, started_by, session_size, sum(sessions), sum(acus), sum(user_messages),
               sum(devin_messages), sum(sessions_with_pr), sum(sessions_with_merged_pr), sum(sessions_with_analysis),
               sum(prs), sum(merged_prs)
        from measured
        group by day, org_id, started_by_kind, started_by, session_size
        having (sum(sessions), sum(acus), sum(user_messages), sum(devin_messages), sum(prs), sum(merged_prs),
                sum(sessions_with_pr), sum(sessions_with_merged_pr), sum(sessions_with_analysis))
               is distinct from (0, 0, 0, 0, 0, 0, 0, 0, 0)
        order by day, org_id, started_by_kind, started_by, session_size
        on conflict on constraint rollup_daily_starters_key do update
        set sessions = r.sessions + excluded.sessions, acus = r.acus + excluded.acus,
            user_messages = r.user_messages + excluded.user_messages,
            devin_messages = r.devin_messages + excluded.devin_messages,
            sessions_with_pr = r.sessions_with_pr + excluded.sessions_with_pr,
            sessions_with_merged_pr = r.sessions_with_merged_pr + excluded.sessions_with_merged_pr,
            sessions_with_analysis = r.sessions_with_analysis + excluded.sessions_with_analysis,
            prs = r.prs + excluded.prs, merged_prs = r.merged_prs + excluded.merged_prs
    ),
    pull_requests as (
        insert into rollup_daily_pull_requests as r
        select s.day, s.org_id, p.repo, sum(s.sign),
               sum(case when p.state = 'merged' then s.sign else 0 end),
               sum(case when p.state = 'closed' then s.sign else 0 end),
               sum(case when p.state = 'open' then s.sign else 0 end),
               sum(case when p.state is null or p.state not in ('open', 'merged', 'closed') then s.sign else 0 end)
        from signed s
        cross join lateral unnest(s.pr_repos, s.pr_states) as p(repo, state)
        group by s.day, s.org_id, p.repo
        having (sum(s.sign), sum(case when p.state = 'merged' then s.sign else 0 end),
                sum(case when p.state = 'closed' then s.sign else 0 end),
                sum(case when p.state = 'open' then s.sign else 0 end)) is distinct from (0, 0, 0, 0)
        order by s.day, s.org_id, p.repo
        on conflict (day, org_id, repo) do update
        set prs = r.prs + excluded.prs, merged = r.merged + excluded.merged, closed = r.closed + excluded.closed,
            open = r.open + excluded.open, unknown = r.unknown + excluded.unknown
    ),
    issues as (
        insert into rollup_daily_issues as r
        select s.day, s.org_id, s.category, i.label, i.impact_level, sum(s.sign * i.n), sum(s.sign)
        from signed s
        cross join lateral (
            select label, impact_level, count(*) as n
            from unnest(s.issue_labels, s.issue_levels) as u(label, impact_level)
            group by label, impact_level
        ) i
        group by s.day, s.org_id, s.category, i.label, i.impact_level
        having (sum(s.sign * i.n), sum(s.sign)) is distinct from (0, 0)
        order by s.day, s.org_id, s.category, i.label, i.impact_level
        on conflict (day, org_id, category, label, impact_level) do update
        set issues = r.issues + excluded.issues, sessions = r.sessions + excluded.sessions
    ),
    issue_levels as (
        insert into rollup_daily_issue_levels as r
        select s.day, s.org_id, s.category, i.impact_level, sum(s.sign * i.n), sum(s.sign)
        from signed s
        cross join lateral (
            select impact_level, count(*) as n from unnest(s.issue_levels) as u(impact_level) group by impact_level
        ) i
        group by s.day, s.org_id, s.category, i.impact_level
        having (sum(s.sign * i.n), sum(s.sign)) is distinct from (0, 0)
        order by s.day, s.org_id, s.category, i.impact_level
        on conflict (day, org_id, category, impact_level) do update
        set issues = r.issues + excluded.issues, sessions = r.sessions + excluded.sessions
    ),
    action_items as (
        insert into rollup_daily_action_items as r
        select s.day, s.org_id, a.type, a.issue_label, sum(s.sign * a.n), sum(s.sign), sum(s.sign * a.linked)
        from signed s
        cross join lateral (
            select type, issue_label, count(*) as n, count(*) filter (where linked) as linked
            from unnest(s.action_types, s.action_linked, s.action_issue_labels) as u(type, linked, issue_label)
            group by type, issue_label
        ) a
        group by s.day, s.org_id, a.type, a.issue_label
        having (sum(s.sign * a.n), sum(s.sign), sum(s.sign * a.linked)) is distinct from (0, 0, 0)
        order by s.day, s.org_id, a.type, a.issue_label
        on conflict on constraint rollup_daily_action_items_key do update
        set action_items = r.action_items + excluded.action_items, sessions = r.sessions + excluded.sessions,
            linked_to_issue = r.linked_to_issue + excluded.linked_to_issue
    ),
    action_item_types as (
        insert into rollup_daily_action_item_types as r
        select s.day, s.org_id, a.type, sum(s.sign * a.n), sum(s.sign), sum(s.sign * a.linked)
        from signed s
        cross join lateral (
            select type, count(*) as n, count(*) filter (where linked) as linked
            from unnest(s.action_types, s.action_linked) as u(type, linked)
            group by type
        ) a
        group by s.day, s.org_id, a.type
        having (sum(s.sign * a.n), sum(s.sign), sum(s.sign * a.linked)) is distinct from (0, 0, 0)
        order by s.day, s.org_id, a.type
        on conflict (day, org_id, type) do update
        set action_items = r.action_items + excluded.action_items, sessions = r.sessions + excluded.sessions,
            linked_to_issue = r.linked_to_issue + excluded.linked_to_issue
    )
    select count(*) into changed from diff;
    return changed;
end
$$;

comment on function rollup_apply(text[]) is 'Brings the rollup_daily_* tables up to date for the given sessions (subtracts what they were counted as, adds what they are now; a deleted session counts as nothing) and returns how many changed. Called by the loader in the transaction of each write; safe to call for any sessions at any time.';

-- The rollups of the sessions already in the warehouse (an upgrade), a month of sessions per call.
do $$
declare
    month date;
begin
    for month in
        select distinct date_trunc('month', created_at at time zone 'UTC')::date from sessions where deleted_at is null
    loop
        perform rollup_apply(array(
            select session_id from sessions
            where deleted_at is null
              and created_at >= month::timestamp at time zone 'UTC'
              and created_at < (month + interval '1 month')::timestamp at time zone 'UTC'));
    end loop;
end
$$;

-- The views of 20261129000010_bi_views.sql read the rollups: same names, columns, types and results (ACUs are
-- summed exactly in numeric, then given as double precision as before). v_daily_usage gains prs and merged_prs.
-- The per-session and per-item views (v_sessions, v_session_issues, v_latest_action_items) stay on the base
-- tables: their grain is the row itself.
create or replace view v_daily_usage as
select
    day,
    org_id,
    origin,
    category,
    sessions,
    acus::double precision as acus,
    -- Stored as numeric so that no absurd count from the API can fail a write; bigint as the view always said.
    user_messages::bigint as user_messages,
    devin_messages::bigint as devin_messages,
    sessions_with_pr,
    sessions_with_merged_pr,
    sessions_with_analysis,
    prs,
    merged_prs
from rollup_daily_usage
where sessions > 0;

comment on view v_daily_usage is 'Usage per UTC day × org × origin × category, from live sessions bucketed by created_at (read from rollup_daily_usage). Every measure adds up across rows (sum them for weeks, months or all orgs).';
comment on column v_daily_usage.prs is 'Pull requests those sessions opened (any state).';
comment on column v_daily_usage.merged_prs is 'Of those, pull requests whose state is merged.';

create or replace view v_pull_request_outcomes as
select
    date_trunc('week', day)::date as week,
    org_id,
    repo,
    sum(prs)::bigint as prs,
    sum(merged)::bigint as merged,
    sum(closed)::bigint as closed,
    sum(open)::bigint as open,
    sum(unknown)::bigint as unknown,
    sum(merged)::double precision / sum(prs) as merge_rate,
    sum(merged)::double precision / nullif(sum(merged) + sum(closed), 0) as decided_merge_rate
from rollup_daily_pull_requests
group by 1, 2, 3
having sum(prs) > 0;

create or replace view v_analysis_issues as
with issues as (
    select label, impact_level, category, sum(issues)::bigint as issues, sum(sessions)::bigint as sessions_affected
    from rollup_daily_issues
    group by 1, 2, 3
    having sum(issues) > 0
),
analysed as (
    select category, sum(sessions_with_analysis)::bigint as analysed_sessions
    from rollup_daily_usage
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

create or replace view v_action_items as
select
    date_trunc('week', day)::date as week,
    org_id,
    type,
    sum(action_items)::bigint as action_items,
    sum(sessions)::bigint as sessions,
    sum(linked_to_issue)::bigint as linked_to_issue
from rollup_daily_action_item_types
group by 1, 2, 3
having sum(action_items) > 0;

-- New views on the rollups, for dashboards that slice what the per-session views would otherwise count row by row.
create view v_daily_starters as
select day, org_id, started_by, started_by_kind, session_size, sessions, acus::double precision as acus,
       user_messages::bigint as user_messages, devin_messages::bigint as devin_messages, sessions_with_pr, sessions_with_merged_pr, sessions_with_analysis, prs,
       merged_prs
from rollup_daily_starters
where sessions > 0;

comment on view v_daily_starters is 'Live sessions per UTC day (of created_at) × org × who started them × session size (read from rollup_daily_starters). Every measure adds up across rows: the fast way to count v_sessions by user or size.';
comment on column v_daily_starters.day is 'UTC calendar day the sessions were created (00:00 to 24:00 UTC).';
comment on column v_daily_starters.org_id is 'Organization.';
comment on column v_daily_starters.started_by is 'Who started the sessions: the user id, else the service user id; null when the API names neither.';
comment on column v_daily_starters.started_by_kind is 'user, service_user or unknown (as v_sessions.started_by_kind).';
comment on column v_daily_starters.session_size is 'Size class: xs, s, m, l, xl.';
comment on column v_daily_starters.sessions is 'Sessions created that day.';
comment on column v_daily_starters.acus is 'ACUs those sessions consumed (so far).';
comment on column v_daily_starters.user_messages is 'Messages users sent in those sessions.';
comment on column v_daily_starters.devin_messages is 'Messages Devin sent in those sessions.';
comment on column v_daily_starters.sessions_with_pr is 'Sessions with at least one pull request.';
comment on column v_daily_starters.sessions_with_merged_pr is 'Sessions with at least one merged pull request.';
comment on column v_daily_starters.sessions_with_analysis is 'Sessions whose AI analysis has been generated.';
comment on column v_daily_starters.prs is 'Pull requests those sessions opened (any state).';
comment on column v_daily_starters.merged_prs is 'Of those, pull requests whose state is merged.';

create view v_daily_issues as
select day, date_trunc('week', day)::date as week, org_id, category, label, impact_level, issues, sessions
from rollup_daily_issues
where issues > 0;

comment on view v_daily_issues is 'Analysis issues of live sessions per UTC day (of the session''s created_at) × org × category × label × impact level (read from rollup_daily_issues). issues adds up across rows; sessions adds up across days, orgs and categories but not across labels or levels (use v_daily_issue_levels for sessions per level).';
comment on column v_daily_issues.day is 'UTC calendar day the sessions were created (00:00 to 24:00 UTC).';
comment on column v_daily_issues.week is 'ISO week of the day, as the date of its Monday.';
comment on column v_daily_issues.org_id is 'Organization of the sessions.';
comment on column v_daily_issues.category is 'Use-case category of the sessions; uncategorized until categorisation has run.';
comment on column v_daily_issues.label is 'Short label of the issue.';
comment on column v_daily_issues.impact_level is 'critical, high, medium, low or other (see function impact_level).';
comment on column v_daily_issues.issues is 'Issues with this label and impact level.';
comment on column v_daily_issues.sessions is 'Sessions with at least one such issue.';

create view v_daily_issue_levels as
select day, date_trunc('week', day)::date as week, org_id, category, impact_level, issues, sessions
from rollup_daily_issue_levels
where issues > 0;

comment on view v_daily_issue_levels is 'Analysis issues of live sessions per UTC day × org × category × impact level, any label (read from rollup_daily_issue_levels). Both measures add up across days, orgs and categories.';
comment on column v_daily_issue_levels.day is 'UTC calendar day the sessions were created (00:00 to 24:00 UTC).';
comment on column v_daily_issue_levels.week is 'ISO week of the day, as the date of its Monday.';
comment on column v_daily_issue_levels.org_id is 'Organization of the sessions.';
comment on column v_daily_issue_levels.category is 'Use-case category of the sessions; uncategorized until categorisation has run.';
comment on column v_daily_issue_levels.impact_level is 'critical, high, medium, low or other (see function impact_level).';
comment on column v_daily_issue_levels.issues is 'Issues of this level.';
comment on column v_daily_issue_levels.sessions is 'Sessions with at least one issue of this level.';

create view v_daily_action_items as
select day, date_trunc('week', day)::date as week, org_id, type, issue_label, action_items, sessions, linked_to_issue
from rollup_daily_action_items
where action_items > 0;

comment on view v_daily_action_items is 'Action items of live sessions per UTC day (of the session''s created_at) × org × type × label of the issue they name (read from rollup_daily_action_items). action_items and linked_to_issue add up across rows; sessions across days and orgs, not across issue labels (v_action_items has sessions per type).';
comment on column v_daily_action_items.day is 'UTC calendar day the sessions were created (00:00 to 24:00 UTC).';
comment on column v_daily_action_items.week is 'ISO week of the day, as the date of its Monday.';
comment on column v_daily_action_items.org_id is 'Organization of the sessions.';
comment on column v_daily_action_items.type is 'Kind of action: machine_setup, repo_config, knowledge, prompt_improvement, other.';
comment on column v_daily_action_items.issue_label is 'Label of the analysis issue the items name (as v_latest_action_items.issue_label); null when they name none.';
comment on column v_daily_action_items.action_items is 'Action items.';
comment on column v_daily_action_items.sessions is 'Sessions with at least one such item.';
comment on column v_daily_action_items.linked_to_issue is 'Of the items, those that name the analysis issue they address.';
