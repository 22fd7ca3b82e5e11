-- Analysis issues per UTC day x org x category x impact level, any label (docs/queries.md 4.10).
select
    day,
    week,
    org_id,
    category,
    impact_level,
    issues,
    sessions
from {{ source('devin', 'v_daily_issue_levels') }}
