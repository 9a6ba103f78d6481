-- How well the feedback loop is fed, per landing day and tenant. Days on which a tenant only sent
-- rejected records still appear (interactions = 0, the per-interaction rates NULL).
with accepted as (
    select
        day,
        tenant_id,
        count(*) as interactions,
        count(*) filter (where has_feedback) as with_feedback,
        count(*) filter (where has_correction) as corrected,
        count(*) filter (where handoff) as handoffs,
        count(*) filter (where abandoned) as abandoned,
        count(*) filter (where is_scored and quality_score is not null) as scored,
        count(*) filter (where is_low_quality) as low_quality
    from {{ ref('int_interactions_enriched') }}
    group by day, tenant_id
),

quarantined as (
    select
        partition_date as day,
        tenant_id,
        count(*) as quarantined
    from {{ ref('stg_quarantined_interactions') }}
    group by partition_date, tenant_id
),

joined as (
    select
        coalesce(a.day, q.day) as day,
        coalesce(a.tenant_id, q.tenant_id) as tenant_id,
        coalesce(a.interactions, 0) as interactions,
        coalesce(q.quarantined, 0) as quarantined,
        coalesce(a.with_feedback, 0) as with_feedback,
        coalesce(a.corrected, 0) as corrected,
        coalesce(a.handoffs, 0) as handoffs,
        coalesce(a.abandoned, 0) as abandoned,
        coalesce(a.scored, 0) as scored,
        coalesce(a.low_quality, 0) as low_quality
    from accepted as a
    full outer join quarantined as q
        on a.day = q.day and a.tenant_id = q.tenant_id
)

select
    tenant_id || '|' || strftime(day, '%Y-%m-%d') as feedback_loop_id,
    day,
    tenant_id,
    interactions,
    quarantined,
    with_feedback / nullif(interactions, 0) as feedback_coverage_rate,
    corrected / nullif(interactions, 0) as correction_rate,
    handoffs / nullif(interactions, 0) as handoff_rate,
    abandoned / nullif(interactions, 0) as abandonment_rate,
    quarantined / nullif(interactions + quarantined, 0) as quarantine_rate,
    scored as scored_interactions,
    low_quality / nullif(scored, 0) as low_quality_rate
from joined
