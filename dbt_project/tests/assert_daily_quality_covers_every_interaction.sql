{{ config(meta={'dagster': {'ref': {'name': 'daily_quality'}}}) }}
-- Every interaction in fct_interactions is counted exactly once in daily_quality, per tenant and
-- day (no row lost or double-counted by the grouping). Returns the disagreeing (tenant, day)s.
with facts as (
    select tenant_id, day, count(*) as n
    from {{ ref('fct_interactions') }}
    group by tenant_id, day
),

daily as (
    select tenant_id, day, sum(interactions) as n
    from {{ ref('daily_quality') }}
    group by tenant_id, day
)

select
    coalesce(f.tenant_id, d.tenant_id) as tenant_id,
    coalesce(f.day, d.day) as day,
    f.n as fct_rows,
    d.n as daily_quality_rows
from facts as f
full outer join daily as d
    on f.tenant_id = d.tenant_id and f.day = d.day
where f.n is distinct from d.n
