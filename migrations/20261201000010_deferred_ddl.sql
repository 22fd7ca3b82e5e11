-- A first backfill loads like pg_restore (issue 14, item 2): into an empty warehouse it drops the secondary indexes
-- of the session tables and the foreign keys to sessions, loads, then builds each index once and validates each
-- key once — instead of maintaining and checking them row by row. What it dropped is recorded here first, in the
-- same transaction as the drops, so that nothing is lost when the process dies meanwhile: every process start
-- (after migrating) and the end of every backfill re-create whatever is recorded, and remove the record in the same
-- transaction. Additive: an older release neither reads nor writes it (it keeps working without the deferred
-- objects, only slower, until this release runs again).
create table sync_deferred_ddl (
    object_name text not null,
    table_name text not null,
    kind text not null,
    definition text not null,
    deferred_at timestamptz not null default now(),
    constraint sync_deferred_ddl_pkey primary key (object_name),
    constraint sync_deferred_ddl_kind_check check (kind in ('index', 'foreign_key'))
);

comment on table sync_deferred_ddl is 'Bookkeeping of the sync: indexes and foreign keys that a first backfill dropped to load faster, until it re-creates them (empty otherwise). Never edit by hand; a row left here means the object is still to be re-created, which the next start of devin-etl does.';
comment on column sync_deferred_ddl.object_name is 'The index or constraint, as SQL names it (quoted where needed).';
comment on column sync_deferred_ddl.table_name is 'Its table, schema-qualified.';
comment on column sync_deferred_ddl.kind is 'index or foreign_key.';
comment on column sync_deferred_ddl.definition is 'How to re-create it: the CREATE INDEX statement, or the constraint definition (pg_get_constraintdef).';
comment on column sync_deferred_ddl.deferred_at is 'When it was dropped.';
