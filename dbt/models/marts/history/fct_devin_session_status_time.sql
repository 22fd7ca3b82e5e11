-- Time each live session spent in each status and detail (docs/queries.md 6.1). A table: the view computes from every session's whole history.
select
    session_id,
    org_id,
    session_created_at,
    status,
    status_detail,
    periods,
    time_in_status,
    hours,
    first_started_at,
    is_current
from {{ source('devin', 'v_session_status_time') }}
