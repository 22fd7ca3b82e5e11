-- Enrichment backoff (issue 14). Additive: older binaries neither read nor write the new table, and re-fetch every
-- pending session on every tick as before.

-- When a session past its first hours (sync.enrichment_backoff_after) that still lacks analysis or category is
-- next re-fetched by the enrichment run: the wait doubles with each fetch that brings neither, up to
-- sync.enrichment_max_interval. A table of its own rather than columns on sessions: it is the sync's bookkeeping,
-- not data for BI; its narrow rows are rewritten often without touching the wide sessions rows; and it holds only
-- the few sessions that wait (rows of sessions that got both, or left the window, are removed).
create table sync_enrichment_backoff (
    session_id text not null,
    attempts integer not null,
    last_attempt_at timestamptz not null,
    next_due_at timestamptz not null,
    constraint sync_enrichment_backoff_pkey primary key (session_id),
    constraint sync_enrichment_backoff_session_fkey foreign key (session_id)
        references sessions (session_id) on delete cascade,
    constraint sync_enrichment_backoff_attempts_check check (attempts > 0)
);

comment on table sync_enrichment_backoff is 'Enrichment backoff: for sessions that still lack analysis or category after sync.enrichment_backoff_after, how often enrichment re-fetched them in vain and when it fetches them next (the wait doubles, up to sync.enrichment_max_interval). Bookkeeping of the sync; the source is the session''s (sessions.source).';
comment on column sync_enrichment_backoff.session_id is 'The session (sessions.session_id) waiting for analysis or category.';
comment on column sync_enrichment_backoff.attempts is 'Re-fetches after sync.enrichment_backoff_after that left it still lacking analysis or category.';
comment on column sync_enrichment_backoff.last_attempt_at is 'When it was last re-fetched, on the API server''s clock (the run''s watermark).';
comment on column sync_enrichment_backoff.next_due_at is 'The first enrichment run at or after this time (API server''s clock, as the watermark) re-fetches it.';
