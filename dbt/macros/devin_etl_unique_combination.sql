{#
  Fails with one row per combination of `columns` that occurs more than once in the model: the grain of a model
  whose key is several columns (nulls count as equal, as in a group by). The package's own, so that it depends on
  nothing but dbt (dbt_utils has unique_combination_of_columns).
#}
{% test devin_etl_unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as occurrences
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
