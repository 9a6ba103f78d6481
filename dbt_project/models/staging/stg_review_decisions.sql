-- Review events copied from the operational store; only decisions carry a verdict.
select
    event_id,
    item_id,
    kind,
    tenant_id,
    interaction_id,
    actor,
    action,
    status_before,
    status_after,
    note,
    event_at,
    auditor,
    prompt_version,
    category,
    severity,
    source
from {{ source('warehouse', 'review_decisions') }}
