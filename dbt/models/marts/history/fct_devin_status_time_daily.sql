select
    day,
    org_id,
    status,
    status_detail,
    time_in_status,
    hours,
    sessions
from {{ source('devin', 'v_status_time_daily') }}
