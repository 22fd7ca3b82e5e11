-- Sync progress per source, with the watermark (API server Unix seconds) as a timestamp.
select
    source,
    watermark,
    backfill_server_start,
    backfill_started_at,
    backfill_completed_at,
    updated_at,
    lease_generation,
    watermark_observed_at,
    clock_offset,
    clock_suspect_offset,
    clock_suspect_count,
    clock_anomaly,
    clock_anomaly_at,
    claimed_tick,
    to_timestamp(watermark) as watermark_at
from {{ source('devin', 'sync_state') }}
