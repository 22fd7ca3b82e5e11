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
