select
    day,
    week,
    org_id,
    category,
    label,
    impact_level,
    issues,
    sessions
from {{ source('devin', 'v_daily_issues') }}
