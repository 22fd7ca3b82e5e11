-- Analysis issues per UTC day x org x category x label x impact level (docs/queries.md 4.11, 4.12).
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
