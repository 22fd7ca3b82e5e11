select
    day,
    week,
    org_id,
    category,
    impact_level,
    issues,
    sessions
from {{ source('devin', 'v_daily_issue_levels') }}
