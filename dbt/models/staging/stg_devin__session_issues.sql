-- Analysis issues of every session, with the impact level the warehouse's views group by (function impact_level).
select
    session_id,
    position,
    issue_id,
    issue,
    impact,
    label,
    {{ adapter.quote(source('devin', 'session_issues').schema) }}.impact_level(impact) as impact_level
from {{ source('devin', 'session_issues') }}
