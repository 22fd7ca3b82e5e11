-- Schema drift and alerts (issue 13). Additive: older binaries ignore the new tables and column.

-- What the API sent that the service's models do not know: one row per (source, path, kind, value).
create table schema_drift (
    source text not null,
    path text not null,
    kind text not null,
    value text not null default '',
    first_seen timestamptz not null default now(),
    last_seen timestamptz not null default now(),
    times_seen bigint not null default 1,
    example_session_id text,
    constraint schema_drift_pkey primary key (source, path, kind, value),
    constraint schema_drift_kind_check check (kind in ('unknown_field', 'unknown_enum_value', 'type_changed'))
);

comment on table schema_drift is 'What the API sent that the service''s models do not know yet: fields, enum values outside the documented lists, and values of another JSON type than the model expects (where the load still succeeded). The data itself is loaded as always (text enums, sessions.raw); this table says what changed, where and since when.';
comment on column schema_drift.source is 'Source (sync.source or sources.NAME) whose API sent it.';
comment on column schema_drift.path is 'JSON path inside one insights item, arrays written as [] (e.g. analysis.issues[].severity).';
comment on column schema_drift.kind is 'unknown_field (a field the models do not have), unknown_enum_value (a value outside the documented list of that field) or type_changed (another JSON type than the model expects).';
comment on column schema_drift.value is 'unknown_field: the JSON type of the new field; unknown_enum_value: the value (cut at 200 characters; beyond 20 distinct values per path they are counted under (other)); type_changed: the JSON type that arrived, e.g. "string (expected number)".';
comment on column schema_drift.first_seen is 'When the service first recorded it (database time).';
comment on column schema_drift.last_seen is 'When it was last recorded (database time; counts are written at the end of each run and at least every few seconds during long ones).';
comment on column schema_drift.times_seen is 'How many items carried it (an item read twice counts twice).';
comment on column schema_drift.example_session_id is 'A session whose item carried it (see sessions.raw for the whole item).';

-- Why a run that did not succeed ended, as the service classified it (api, invalid_item, mass_delete_refused,
-- interrupted, ...); null for runs that succeeded and for runs written by older releases.
alter table sync_runs add column error_kind text;
comment on column sync_runs.error_kind is 'Why a run that did not succeed ended, as classified by the service: api, store, invalid_item, mass_delete_refused, lock_lost, source_busy, interrupted (aborted by shutdown), other (null when it succeeded, or written by an older release).';

-- Webhook alerts: one row per incident (a condition that started and, for most kinds, ended). The partial unique
-- indexes make "one alert per incident" hold across replicas: raising an alert is an insert that does nothing
-- when the incident is already open (or, for one-shot events such as new schema drift, already raised once).
create table alerts (
    alert_id bigint generated always as identity,
    alert_key text not null,
    kind text not null,
    source text,
    one_shot boolean not null default false,
    summary text not null,
    details jsonb not null default '{}',
    opened_at timestamptz not null default now(),
    resolved_at timestamptz,
    fired_sent_at timestamptz,
    resolved_sent_at timestamptz,
    attempts integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error text,
    constraint alerts_pkey primary key (alert_id)
);
create unique index alerts_open_key on alerts (alert_key) where resolved_at is null and not one_shot;
create unique index alerts_one_shot_key on alerts (alert_key) where one_shot;
create index alerts_pending_idx on alerts (next_attempt_at)
    where fired_sent_at is null or (resolved_at is not null and resolved_sent_at is null and not one_shot);

comment on table alerts is 'Webhook alerts (alerts.webhook_url), one row per incident, kept after they are sent so replicas never send the same alert twice and operators can see what was sent.';
comment on column alerts.alert_id is 'Incident id.';
comment on column alerts.alert_key is 'Stable key of the condition, e.g. source_failing/default, stale/default, mass_delete_refused/default, schema_drift/default/unknown_field/analysis.issues[].severity/string.';
comment on column alerts.kind is 'source_failing, stale, mass_delete_refused or schema_drift.';
comment on column alerts.source is 'Source the alert is about.';
comment on column alerts.one_shot is 'True for events that have no end (new schema drift): sent once, never resolved.';
comment on column alerts.summary is 'One line for people, as sent.';
comment on column alerts.details is 'Structured details, as sent (never a token).';
comment on column alerts.opened_at is 'When the incident was raised.';
comment on column alerts.resolved_at is 'When the condition ended (null while open; equal to opened_at for one-shot events).';
comment on column alerts.fired_sent_at is 'When the receiver accepted the firing notification (null until then).';
comment on column alerts.resolved_sent_at is 'When the receiver accepted the resolved notification.';
comment on column alerts.attempts is 'Delivery attempts so far, failed ones included.';
comment on column alerts.next_attempt_at is 'Earliest time of the next delivery attempt (backoff after a failure; a lease while one replica sends).';
comment on column alerts.last_error is 'Why the last delivery attempt failed (the receiver''s URL is never written).';
