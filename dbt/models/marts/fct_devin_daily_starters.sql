-- Sessions and ACUs per UTC day x org x user or service user x session size (docs/queries.md 4.5, 4.6); week added.
select
    day,
    org_id,
    started_by,
    started_by_kind,
    session_size,
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
from {{ source('devin', 'v_daily_starters') }}
