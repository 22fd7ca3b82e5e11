-- Sync health per source: watermark, lag, last run, last 24 hours (docs/queries.md 4.18).
select
    source,
    watermark,
    watermark_at,
    lag_seconds,
    backfill_completed_at,
    last_run_id,
    last_run_mode,
    last_run_status,
    last_run_started_at,
    last_run_finished_at,
    last_run_error,
    last_success_at,
    runs_24h,
    failed_runs_24h,
    sessions_upserted_24h,
    retries_24h
from {{ source('devin', 'v_sync_health') }}
