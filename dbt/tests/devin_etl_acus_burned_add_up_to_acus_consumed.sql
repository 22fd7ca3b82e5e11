-- ACUs burned per day (spread over the days sessions ran, from their history) add up, per org, to the ACUs the live
-- sessions have consumed (v_session_acus_daily's definition: every increment is spread, the first kept version's
-- count from the session's creation). Fails with the orgs where they do not (beyond float rounding).
with burned as (
    select org_id, sum(acus) as acus from {{ ref('fct_devin_acus_burned_daily') }} group by org_id
),
consumed as (
    select org_id, sum(acus_consumed) as acus from {{ ref('dim_devin_sessions') }} group by org_id
)
select coalesce(b.org_id, c.org_id) as org_id, b.acus as burned, c.acus as consumed
from burned b
full join consumed c on c.org_id = b.org_id
where abs(coalesce(b.acus, 0) - coalesce(c.acus, 0)) > 1e-6 * greatest(1, abs(coalesce(c.acus, 0)))
