-- Content hash (issue 14): a re-read of an unchanged session (a reconcile, the incremental lookback, enrichment)
-- is recognised by one index probe instead of parsing and comparing its JSON, so it writes nothing and costs
-- almost nothing. Additive: an older binary neither reads nor writes these columns.
--
-- The hash is trusted only while content_hash_at equals synced_at. Every release's merge sets synced_at = now()
-- when it writes a session; this release also sets content_hash_at = now() in the same statement (and the COPY
-- path leaves both to their default, now(), in the same transaction). An older release, brought back by a
-- rollback, writes synced_at but not the hash: its rows stop matching, and the next read by this release rewrites
-- them (and brings their history and rollups up to date, which the older release may not have done).
-- Existing rows have no hash yet: each is rewritten once, the first time this release reads it.
alter table sessions add column content_hash bigint;
alter table sessions add column content_hash_at timestamptz default now();

comment on column sessions.content_hash is 'Internal to the sync: the first 8 bytes of the SHA-256 of the session''s JSON as the API last returned it; a re-read with the same hash is skipped. Trusted only while content_hash_at = synced_at; null = not known yet.';
comment on column sessions.content_hash_at is 'Internal to the sync: synced_at of the write that set content_hash (a later write by a release that does not know the hash leaves it behind, and the hash is then ignored).';
