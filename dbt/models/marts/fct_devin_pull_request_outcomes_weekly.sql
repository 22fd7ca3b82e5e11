select
    week,
    org_id,
    repo,
    prs,
    merged,
    closed,
    open,
    unknown,
    merge_rate,
    decided_merge_rate
from {{ source('devin', 'v_pull_request_outcomes') }}
