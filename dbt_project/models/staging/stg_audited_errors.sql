-- The Auditor's verdicts, one row per (interaction, auditor, prompt version).
-- in_calibration / label_weight (the reviewer-label design, ml.audit.labels) are NULL on verdicts
-- written before they were recorded, and on a warehouse whose audited_errors table predates them
-- (the audited_errors asset adds the columns on its next run).
{%- set have = [] %}
{%- if execute %}
{%- for c in adapter.get_columns_in_relation(source('warehouse', 'audited_errors')) %}
{%- do have.append(c.name | lower) %}
{%- endfor %}
{%- endif %}
select
    interaction_id,
    tenant_id,
    partition_date,
    auditor,
    prompt_version,
    is_error,
    category,
    severity,
    confidence,
    explanation,
    audited_at,
    cast(audited_at as date) as audit_date,
    {% if 'in_calibration' in have %}in_calibration{% else %}cast(null as boolean) as in_calibration{% endif %},
    {% if 'label_weight' in have %}label_weight{% else %}cast(null as double) as label_weight{% endif %}
from {{ source('warehouse', 'audited_errors') }}
