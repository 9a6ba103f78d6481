-- One row per scored interaction.
select
    interaction_id,
    tenant_id,
    partition_date,
    model_version,
    user_satisfaction,
    functional_correctness,
    context_relevance,
    efficiency,
    quality_score,
    confidence,
    dimensions_present,
    scorer_version
from {{ source('warehouse', 'interaction_quality') }}
