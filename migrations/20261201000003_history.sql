-- Session history (issue 12): every distinct observed version of a session's tracked attributes, and of each of
-- its pull requests' state. Written by the loader in the same transaction as the session's upsert, and only when
-- a tracked attribute changed. Additive only: an older release keeps working (it writes no history; the versions it
-- writes are caught up by this release's next reconcile).

create table session_history (
    session_id text not null,
    valid_from timestamptz not null,
    valid_to timestamptz,
    status text not null,
    status_detail text,
    acus_consumed double precision not null,
    category text,
    has_analysis boolean not null,
    is_archived boolean not null,
    constraint session_history_pkey primary key (session_id, valid_from),
    constraint session_history_interval_check check (valid_to is null or valid_to >= valid_from)
) with (fillfactor = 90);
-- One current version per session is the loader's invariant, checked by its tests rather than by a constraint: an
-- exclusion constraint on it made writing history rows 2.5 times as slow (measured on 100,000 sessions).
-- No index on valid_to: closing a version then changes no indexed column, so with the room fillfactor leaves on
-- each page it is a HOT update (no new index entries). Retention's daily prune reads the table instead.

comment on table session_history is 'One row per distinct observed version of a session''s tracked attributes (status, status_detail, acus_consumed, category, has_analysis, is_archived). History starts at the first sync: the first row of a session is its state when this warehouse first saw it (valid_from = its updated_at); changes before that are unknown. Rows of a session meet exactly (valid_to = the next row''s valid_from); a soft delete closes the current row, a revival opens a new one. Closed rows older than history.retention are pruned.';
comment on column session_history.session_id is 'Devin session id (sessions.session_id).';
comment on column session_history.valid_from is 'Start of this version: the session''s updated_at when the change bumped it; otherwise (analysis or category arriving later) the API server time (HTTP Date) at which the change was observed.';
comment on column session_history.valid_to is 'End of this version: the next version''s valid_from, or the time the session was marked deleted; null for the current version.';
comment on column session_history.status is 'Session status during this version (text, as the API sends it).';
comment on column session_history.status_detail is 'Status detail during this version.';
comment on column session_history.acus_consumed is 'ACUs the session had consumed by this version (cumulative).';
comment on column session_history.category is 'Category during this version (null while not yet categorized).';
comment on column session_history.has_analysis is 'Whether the session''s analysis was present in this version.';
comment on column session_history.is_archived is 'Whether the session was archived in this version.';

create table session_pull_request_history (
    session_id text not null,
    pr_url text not null,
    valid_from timestamptz not null,
    valid_to timestamptz,
    pr_state text,
    constraint session_pull_request_history_pkey primary key (session_id, pr_url, valid_from),
    constraint session_pull_request_history_interval_check check (valid_to is null or valid_to >= valid_from)
) with (fillfactor = 90);

comment on table session_pull_request_history is 'One row per distinct observed state of each pull request of a session. Same rules as session_history: history starts at the first sync, rows of a PR meet exactly, a PR that disappears from its session (or whose session is deleted) has its row closed.';
comment on column session_pull_request_history.session_id is 'Devin session id (sessions.session_id).';
comment on column session_pull_request_history.pr_url is 'Pull request URL (session_pull_requests.pr_url).';
comment on column session_pull_request_history.valid_from is 'Start of this state: the session''s updated_at when the change bumped it, otherwise the API server time at which it was observed.';
comment on column session_pull_request_history.valid_to is 'End of this state: the next state''s valid_from, or when the PR disappeared from the session or the session was marked deleted; null while current.';
comment on column session_pull_request_history.pr_state is 'PR state during this period (open, merged, closed, or what the API sends; null if unknown).';

-- History starts now for a warehouse that already holds sessions: one row per live session and PR, as the
-- first sync would have written.
insert into session_history (session_id, valid_from, status, status_detail, acus_consumed, category, has_analysis,
                             is_archived)
select session_id, updated_at, status, status_detail, acus_consumed, category, has_analysis, is_archived
from sessions
where deleted_at is null;

insert into session_pull_request_history (session_id, pr_url, valid_from, pr_state)
select p.session_id, p.pr_url, s.updated_at, p.pr_state
from session_pull_requests p
join sessions s using (session_id)
where s.deleted_at is null;
