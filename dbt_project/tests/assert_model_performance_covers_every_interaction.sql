{{ config(meta={'dagster': {'ref': {'name': 'model_performance'}}}) }}
-- Every interaction is counted exactly once in model_performance, on the UTC day of its reply
-- (no row lost or double-counted by the joins and the grouping). Returns the disagreeing days.
with facts as (
    select cast(ts as date) as day, count(*) as n
    from {{ ref('stg_interactions') }}
    group by all
),

performance as (
    select day, sum(interactions) as n
    from {{ ref('model_performance') }}
    group by day
)

select
    coalesce(f.day, p.day) as day,
    f.n as interactions,
    p.n as model_performance_interactions
from facts as f
full outer join performance as p on f.day = p.day
where f.n is distinct from p.n
