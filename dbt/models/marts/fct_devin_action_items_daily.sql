select
    day,
    week,
    org_id,
    type,
    issue_label,
    action_items,
    sessions,
    linked_to_issue
from {{ source('devin', 'v_daily_action_items') }}
