-- Webhook alert incidents.
select
    alert_id,
    alert_key,
    kind,
    source,
    one_shot,
    summary,
    details,
    opened_at,
    resolved_at,
    fired_sent_at,
    resolved_sent_at,
    attempts,
    next_attempt_at,
    last_error
from {{ source('devin', 'alerts') }}
