-- Action items of every session.
select
    session_id,
    position,
    action_item,
    issue_id,
    type
from {{ source('devin', 'session_action_items') }}
