-- Action items per ISO week x org x type, with the sessions that had one (docs/queries.md 4.13).
select
    week,
    org_id,
    type,
    action_items,
    sessions,
    linked_to_issue
from {{ source('devin', 'v_action_items') }}
