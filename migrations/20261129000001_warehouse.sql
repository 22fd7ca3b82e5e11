-- The warehouse schema of DESIGN.md: the public contract BI users build on.
-- Tables land in the schema named by database.schema: the service creates it and sets search_path to it
-- before running migrations, so names here are unqualified.

create table sessions (
    session_id text not null,
    org_id text not null,
    user_id text,
    service_user_id text,
    title text,
    url text not null,
    status text not null,
    status_detail text,
    origin text,
    category text,
    subcategory text,
    session_size text not null,
    acus_consumed double precision not null,
    num_user_messages bigint not null,
    num_devin_messages bigint not null,
    is_archived boolean not null,
    playbook_id text,
    parent_session_id text,
    tags text[] not null,
    structured_output jsonb,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    has_analysis boolean not null,
    classification_category text,
    classification_confidence double precision,
    programming_languages text[],
    tools_and_frameworks text[],
    suggested_prompt_original text,
    suggested_prompt text,
    raw jsonb not null,
    first_synced_at timestamptz not null default now(),
    synced_at timestamptz not null default now(),
    deleted_at timestamptz,
    constraint sessions_pkey primary key (session_id)
);
create index sessions_created_at_idx on sessions (created_at);
create index sessions_updated_at_idx on sessions (updated_at);
create index sessions_org_id_created_at_idx on sessions (org_id, created_at);
create index sessions_user_id_idx on sessions (user_id);
create index sessions_status_idx on sessions (status);
create index sessions_category_idx on sessions (category);
-- Late enrichment looks for recent sessions whose analysis or category is still missing.
create index sessions_pending_enrichment_idx on sessions (created_at) where not has_analysis or category is null;

create table session_pull_requests (
    session_id text not null,
    pr_url text not null,
    pr_state text,
    repo text,
    pr_number integer,
    constraint session_pull_requests_pkey primary key (session_id, pr_url),
    constraint session_pull_requests_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);
create index session_pull_requests_repo_idx on session_pull_requests (repo);

create table session_issues (
    session_id text not null,
    position integer not null,
    issue_id text not null,
    issue text not null,
    impact text not null,
    label text not null,
    constraint session_issues_pkey primary key (session_id, position),
    constraint session_issues_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table session_action_items (
    session_id text not null,
    position integer not null,
    action_item text not null,
    issue_id text,
    type text not null,
    constraint session_action_items_pkey primary key (session_id, position),
    constraint session_action_items_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table session_timeline_events (
    session_id text not null,
    position integer not null,
    title text not null,
    description text not null,
    color text not null,
    issue_id text,
    constraint session_timeline_events_pkey primary key (session_id, position),
    constraint session_timeline_events_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table session_note_usages (
    session_id text not null,
    kind text not null,
    position integer not null,
    note_id text not null,
    message text not null,
    reason text not null,
    constraint session_note_usages_pkey primary key (session_id, kind, position),
    constraint session_note_usages_kind_check check (kind in ('good', 'bad')),
    constraint session_note_usages_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table session_prompt_feedback (
    session_id text not null,
    position integer not null,
    summary text not null,
    excerpt text not null,
    details text not null,
    issue_id text,
    constraint session_prompt_feedback_pkey primary key (session_id, position),
    constraint session_prompt_feedback_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table session_tags (
    session_id text not null,
    tag text not null,
    constraint session_tags_pkey primary key (session_id, tag),
    constraint session_tags_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);
create index session_tags_tag_idx on session_tags (tag);

create table session_children (
    session_id text not null,
    child_session_id text not null,
    constraint session_children_pkey primary key (session_id, child_session_id),
    constraint session_children_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade
);

create table sync_state (
    source text not null,
    watermark bigint,
    backfill_server_start bigint,
    backfill_started_at timestamptz,
    backfill_completed_at timestamptz,
    updated_at timestamptz not null default now(),
    constraint sync_state_pkey primary key (source)
);

create table sync_backfill_windows (
    source text not null,
    created_after bigint not null,
    created_before bigint not null,
    sessions bigint not null,
    completed_at timestamptz not null default now(),
    constraint sync_backfill_windows_pkey primary key (source, created_after, created_before)
);

create table sync_runs (
    run_id bigint generated always as identity,
    source text not null,
    mode text not null,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    status text not null,
    pages bigint not null default 0,
    sessions_upserted bigint not null default 0,
    rows_written jsonb not null default '{}',
    requests bigint not null default 0,
    retries bigint not null default 0,
    watermark_before bigint,
    watermark_after bigint,
    error text,
    constraint sync_runs_pkey primary key (run_id),
    constraint sync_runs_mode_check check (mode in ('incremental', 'backfill', 'enrichment', 'reconcile')),
    constraint sync_runs_status_check check (status in ('running', 'succeeded', 'failed', 'aborted'))
);
create index sync_runs_source_started_at_idx on sync_runs (source, started_at desc);

comment on table sessions is 'One row per Devin session, as last returned by the insights API. Soft-deleted rows have deleted_at set.';
comment on column sessions.session_id is 'Devin session id (primary key).';
comment on column sessions.org_id is 'Organization the session belongs to.';
comment on column sessions.user_id is 'User who started the session; null when a service user did.';
comment on column sessions.service_user_id is 'Service user (API key) that started the session, if any.';
comment on column sessions.title is 'Session title, if any.';
comment on column sessions.url is 'Link to the session in the Devin web app.';
comment on column sessions.status is 'Session status: new, claimed, running, exit, error, suspended, resuming (newer values are kept as they come).';
comment on column sessions.status_detail is 'More detail on the status, e.g. working, waiting_for_user, finished, or why a session was suspended.';
comment on column sessions.origin is 'Where the session was started: webapp, slack, teams, api, linear, jira, scheduled, automation, cli, desktop, other.';
comment on column sessions.category is 'Use-case category, once categorisation has run (e.g. bug_fixing, feature_development); null before.';
comment on column sessions.subcategory is 'Subcategory display name; Other when a category is set but no subcategory was assigned.';
comment on column sessions.session_size is 'Size class from ACU usage and message count: xs, s, m, l, xl.';
comment on column sessions.acus_consumed is 'Agent compute units consumed by the session.';
comment on column sessions.num_user_messages is 'Number of messages the user sent.';
comment on column sessions.num_devin_messages is 'Number of messages Devin sent.';
comment on column sessions.is_archived is 'Whether the session is archived.';
comment on column sessions.playbook_id is 'Playbook the session ran, if any.';
comment on column sessions.parent_session_id is 'Parent session when this session was started by another one.';
comment on column sessions.tags is 'Tags on the session (also one row each in session_tags).';
comment on column sessions.structured_output is 'Validated structured output of the session (JSON), if any.';
comment on column sessions.created_at is 'When the session was created (UTC).';
comment on column sessions.updated_at is 'When the session last changed, as reported by the API (UTC).';
comment on column sessions.has_analysis is 'Whether the AI analysis has been generated for the session.';
comment on column sessions.classification_category is 'Category given by the AI analysis classification.';
comment on column sessions.classification_confidence is 'Confidence of that classification, 0 to 1.';
comment on column sessions.programming_languages is 'Programming languages the analysis found in the session.';
comment on column sessions.tools_and_frameworks is 'Tools and frameworks the analysis found in the session.';
comment on column sessions.suggested_prompt_original is 'The prompt the session started with, as quoted by the analysis.';
comment on column sessions.suggested_prompt is 'A better prompt the analysis suggests.';
comment on column sessions.raw is 'The session exactly as the API returned it (JSON), including fields this schema has no column for yet.';
comment on column sessions.first_synced_at is 'When devin-etl first loaded the session.';
comment on column sessions.synced_at is 'When devin-etl last wrote a change to the session.';
comment on column sessions.deleted_at is 'When a reconcile pass found the session gone from the API (soft delete); null while it exists.';

comment on table session_pull_requests is 'Pull requests opened by a session: one row per session and PR URL.';
comment on column session_pull_requests.session_id is 'The session (sessions.session_id).';
comment on column session_pull_requests.pr_url is 'URL of the pull / merge request.';
comment on column session_pull_requests.pr_state is 'State as reported by the API, e.g. open, merged, closed; null if unknown.';
comment on column session_pull_requests.repo is 'Repository as owner/name (GitLab: group/project), parsed from a GitHub or GitLab URL; null for other hosts.';
comment on column session_pull_requests.pr_number is 'PR / merge request number parsed from the URL; null if it has none.';

comment on table session_issues is 'Issues the AI analysis found in a session, in the order the API lists them.';
comment on column session_issues.session_id is 'The session (sessions.session_id).';
comment on column session_issues.position is 'Index in the API''s list, from 0.';
comment on column session_issues.issue_id is 'The issue''s id in the analysis (referenced by action items, timeline events and feedback); may be empty.';
comment on column session_issues.issue is 'What went wrong.';
comment on column session_issues.impact is 'How much it mattered, as the analysis states it.';
comment on column session_issues.label is 'Short label of the issue.';

comment on table session_action_items is 'Action items the AI analysis recommends for a session.';
comment on column session_action_items.session_id is 'The session (sessions.session_id).';
comment on column session_action_items.position is 'Index in the API''s list, from 0.';
comment on column session_action_items.action_item is 'What to do.';
comment on column session_action_items.issue_id is 'The analysis issue this item addresses (session_issues.issue_id), if any.';
comment on column session_action_items.type is 'Kind of action: machine_setup, repo_config, knowledge, prompt_improvement, other.';

comment on table session_timeline_events is 'Timeline of a session as summarized by the AI analysis.';
comment on column session_timeline_events.session_id is 'The session (sessions.session_id).';
comment on column session_timeline_events.position is 'Index in the API''s list, from 0 (chronological).';
comment on column session_timeline_events.title is 'Event title.';
comment on column session_timeline_events.description is 'What happened.';
comment on column session_timeline_events.color is 'Display colour hint from the API; may be empty.';
comment on column session_timeline_events.issue_id is 'The analysis issue this event relates to, if any.';

comment on table session_note_usages is 'Knowledge notes the analysis found used well (kind good) or badly (kind bad) in a session.';
comment on column session_note_usages.session_id is 'The session (sessions.session_id).';
comment on column session_note_usages.kind is 'good or bad.';
comment on column session_note_usages.position is 'Index in the API''s list of that kind, from 0.';
comment on column session_note_usages.note_id is 'The knowledge note.';
comment on column session_note_usages.message is 'What the analysis says about the usage.';
comment on column session_note_usages.reason is 'Why it was good or bad.';

comment on table session_prompt_feedback is 'Feedback items on the session''s prompt from the analysis'' suggested prompt.';
comment on column session_prompt_feedback.session_id is 'The session (sessions.session_id).';
comment on column session_prompt_feedback.position is 'Index in the API''s list, from 0.';
comment on column session_prompt_feedback.summary is 'Short summary of the feedback.';
comment on column session_prompt_feedback.excerpt is 'The part of the prompt it is about.';
comment on column session_prompt_feedback.details is 'The feedback in full.';
comment on column session_prompt_feedback.issue_id is 'The analysis issue it relates to, if any.';

comment on table session_tags is 'One row per session and tag.';
comment on column session_tags.session_id is 'The session (sessions.session_id).';
comment on column session_tags.tag is 'A tag on the session.';

comment on table session_children is 'Sessions started by another session: one row per parent and child.';
comment on column session_children.session_id is 'The parent session (sessions.session_id).';
comment on column session_children.child_session_id is 'A child session''s id.';

comment on table sync_state is 'Sync progress per source: the watermark and the backfill''s state.';
comment on column sync_state.source is 'Source name (config sync.source).';
comment on column sync_state.watermark is 'High-water mark of updated_at, Unix seconds of the API server''s clock: the next incremental run reads sessions updated after this minus the lookback.';
comment on column sync_state.backfill_server_start is 'API server time (Unix seconds) when the current or last backfill started; the watermark it sets on completion.';
comment on column sync_state.backfill_started_at is 'When the current or last backfill started (local clock).';
comment on column sync_state.backfill_completed_at is 'When the last backfill completed; null while one is in progress or none ever ran.';
comment on column sync_state.updated_at is 'When this row last changed.';

comment on table sync_backfill_windows is 'Backfill windows (created_at ranges) already loaded, so an interrupted backfill resumes where it stopped.';
comment on column sync_backfill_windows.source is 'Source name.';
comment on column sync_backfill_windows.created_after is 'Window start as sent to the API (created_after, Unix seconds).';
comment on column sync_backfill_windows.created_before is 'Window end as sent to the API (created_before, Unix seconds; the largest bigint for the open-ended last window).';
comment on column sync_backfill_windows.sessions is 'Sessions the API returned for the window.';
comment on column sync_backfill_windows.completed_at is 'When the window was fully loaded.';

comment on table sync_runs is 'One row per sync run: what it did and how it ended.';
comment on column sync_runs.run_id is 'Run id.';
comment on column sync_runs.source is 'Source name.';
comment on column sync_runs.mode is 'incremental, backfill, enrichment or reconcile.';
comment on column sync_runs.started_at is 'When the run started.';
comment on column sync_runs.finished_at is 'When it ended; null while running (or if the process died).';
comment on column sync_runs.status is 'running, succeeded, failed, or aborted (stopped by shutdown).';
comment on column sync_runs.pages is 'Pages read from the API.';
comment on column sync_runs.sessions_upserted is 'Sessions inserted or changed (unchanged re-reads are not counted).';
comment on column sync_runs.rows_written is 'Rows written per table, as JSON {table: count}.';
comment on column sync_runs.requests is 'HTTP requests made, retries included.';
comment on column sync_runs.retries is 'Requests that were retried.';
comment on column sync_runs.watermark_before is 'Watermark when the run started.';
comment on column sync_runs.watermark_after is 'Watermark when it ended.';
comment on column sync_runs.error is 'Why the run failed.';
