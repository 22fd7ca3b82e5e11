-- Pull requests of every session.
select
    session_id,
    pr_url,
    pr_state,
    repo,
    pr_number
from {{ source('devin', 'session_pull_requests') }}
