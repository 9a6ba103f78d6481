{#
    Fails on every combination of `columns` that occurs on more than one row: the composite key
    test (an interaction is identified by (tenant_id, interaction_id): ids are per tenant).
#}
{% test unique_combination(model, columns) %}

select {{ columns | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1

{% endtest %}
