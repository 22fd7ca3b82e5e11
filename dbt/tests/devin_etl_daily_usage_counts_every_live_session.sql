-- The usage mart (read from the rollups behind v_daily_usage) counts every live session once, with its ACUs, on
-- the UTC day it was created: compared per day and org with the sessions themselves. Fails with the differing rows.
with mart as (
    select day, org_id, sum(sessions) as sessions, sum(acus) as acus
    from {{ ref('fct_devin_daily_usage') }}
    group by day, org_id
),
sessions as (
    select (created_at at time zone 'UTC')::date as day, org_id, count(*) as sessions, sum(acus_consumed) as acus
    from {{ ref('stg_devin__sessions') }}
    where not is_deleted
    group by 1, 2
)
select coalesce(m.day, s.day) as day, coalesce(m.org_id, s.org_id) as org_id,
       m.sessions as mart_sessions, s.sessions as sessions, m.acus as mart_acus, s.acus as acus
from mart m
full join sessions s on s.day = m.day and s.org_id = m.org_id
where m.sessions is distinct from s.sessions
   or abs(coalesce(m.acus, 0) - coalesce(s.acus, 0)) > 1e-6 * greatest(1, abs(coalesce(s.acus, 0)))
