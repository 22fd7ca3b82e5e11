-- Every observed state of every pull request; is_current marks the one in force.
select
    session_id,
    pr_url,
    valid_from,
    valid_to,
    pr_state,
    valid_to is null as is_current
from {{ source('devin', 'session_pull_request_history') }}
