-- Every observed version of every session; is_current marks the one in force.
select
    session_id,
    valid_from,
    valid_to,
    status,
    status_detail,
    acus_consumed,
    category,
    has_analysis,
    is_archived,
    valid_to is null as is_current
from {{ source('devin', 'session_history') }}
