-- The Auditor's verdicts, one row per (interaction, auditor, prompt version).
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
    cast(audited_at as date) as audit_date
from {{ source('warehouse', 'audited_errors') }}
