-- One row per PR of a live session over its known history: first open, merged, closed; days to merge (docs/queries.md 6.3, 6.4). A table.
select
    session_id,
    pr_url,
    repo,
    org_id,
    session_created_at,
    first_seen_at,
    first_open_at,
    first_merged_at,
    first_closed_at,
    current_state,
    is_present,
    last_state,
    gone_at,
    states,
    merge_observed,
    time_to_merge,
    hours_to_merge,
    days_to_merge
from {{ source('devin', 'v_pull_request_lifecycle') }}
