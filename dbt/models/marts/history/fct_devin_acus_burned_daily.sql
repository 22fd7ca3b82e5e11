select
    day,
    week,
    org_id,
    user_id,
    started_by,
    category,
    acus,
    sessions
from {{ source('devin', 'v_acus_burned_daily') }}
