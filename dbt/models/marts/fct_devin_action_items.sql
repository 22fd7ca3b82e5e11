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
