{{ config(meta={'dagster': {'ref': {'name': 'training_data_growth'}}}) }}
-- training_data_growth's running totals on its last day equal the sample decisions in the
-- warehouse (each item's latest decision), per tenant, source and category: fails on every
-- group where they differ and on every decided group missing from the mart.
with latest as (
    select
        tenant_id,
        coalesce(source, 'unknown') as source,
        coalesce(category, 'uncategorized') as category,
        status_after
    from {{ ref('stg_review_decisions') }}
    where kind = 'sample' and action = 'decide'
    qualify row_number() over (partition by item_id order by event_id desc) = 1
),

expected as (
    select
        tenant_id,
        source,
        category,
        count(*) filter (where status_after in ('approved', 'edited')) as approved,
        count(*) filter (where status_after = 'rejected') as rejected
    from latest
    where status_after in ('approved', 'edited', 'rejected')
    group by all
),

last_day as (
    select tenant_id, source, category, cumulative_approved, cumulative_rejected
    from {{ ref('training_data_growth') }}
    qualify row_number() over (partition by tenant_id, source, category order by day desc) = 1
)

select e.*, l.cumulative_approved, l.cumulative_rejected
from expected as e
left join last_day as l using (tenant_id, source, category)
where l.cumulative_approved is distinct from e.approved
   or l.cumulative_rejected is distinct from e.rejected
