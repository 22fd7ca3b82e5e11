-- ACUs burned per UTC day x org x user x category, spread over the days sessions ran (docs/queries.md 6.5, 6.6). A table.
select
    day,
    week,
    org_id,
    user_id,
    started_by,
    category,
    acus,
    sessions
from {{ source('devin', 'v_acus_burned_daily') }}
