-- One row per action item of a live session, with its session's link (docs/queries.md 4.14, 4.16).
select
    session_id,
    session_created_at,
    day,
    week,
    org_id,
    category,
    session_title,
    session_url,
    position,
    type,
    action_item,
    issue_id,
    issue_label
from {{ source('devin', 'v_latest_action_items') }}
