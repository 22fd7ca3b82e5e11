-- Session-hours per UTC day x org x status x detail (docs/queries.md 6.2). A table, as of the last dbt run: today is partial.
select
    day,
    org_id,
    status,
    status_detail,
    time_in_status,
    hours,
    sessions
from {{ source('devin', 'v_status_time_daily') }}
