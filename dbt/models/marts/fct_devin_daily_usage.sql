-- Sessions, ACUs and PRs per UTC day x org x origin x category (docs/queries.md 4.1-4.4, 4.8); week added for weekly rollups.
select
    day,
    org_id,
    origin,
    category,
    sessions,
    acus,
    user_messages,
    devin_messages,
    sessions_with_pr,
    sessions_with_merged_pr,
    sessions_with_analysis,
    prs,
    merged_prs,
    date_trunc('week', day)::date as week
from {{ source('devin', 'v_daily_usage') }}
