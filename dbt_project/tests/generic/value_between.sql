{#
    Fails on every row whose value lies outside [min_value, max_value]. NULLs pass (a rate over an
    empty denominator is NULL, not out of range). Used for rates (0..1), scores and counts.
#}
{% test value_between(model, column_name, min_value, max_value) %}

select {{ column_name }} as offending_value
from {{ model }}
where {{ column_name }} is not null
  and ({{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }})

{% endtest %}
