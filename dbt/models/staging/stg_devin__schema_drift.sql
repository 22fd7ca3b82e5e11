-- What the API sent that devin-etl's models do not know yet.
select
    source,
    path,
    kind,
    value,
    first_seen,
    last_seen,
    times_seen,
    example_session_id
from {{ source('devin', 'schema_drift') }}
