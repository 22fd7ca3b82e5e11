-- Every sync run.
select
    run_id,
    source,
    mode,
    started_at,
    finished_at,
    status,
    pages,
    sessions_upserted,
    rows_written,
    requests,
    retries,
    watermark_before,
    watermark_after,
    error,
    error_kind
from {{ source('devin', 'sync_runs') }}
