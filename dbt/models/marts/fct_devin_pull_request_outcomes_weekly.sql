-- PR outcomes per ISO week x org x repository (docs/queries.md 4.7, 4.9).
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
