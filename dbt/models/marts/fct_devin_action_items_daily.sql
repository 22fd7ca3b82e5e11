-- Action items per UTC day x org x type x label of the issue they name (docs/queries.md 4.15); sessions add up across days
-- and orgs, not across issue labels: per type, see fct_devin_action_items_weekly.
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
