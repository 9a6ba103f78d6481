-- Quality per tenant, landing day and model version.
select
    tenant_id || '|' || strftime(day, '%Y-%m-%d') || '|' || model_version as daily_quality_id,
    tenant_id,
    day,
    model_version,
    count(*) as interactions,
    count(*) filter (where has_thumbs) as thumbs_rated,
    count(*) filter (where thumbs_up) / nullif(count(*) filter (where has_thumbs), 0)
        as thumbs_up_rate,
    avg(feedback_rating) as mean_rating,
    avg(case when handoff then 1.0 else 0.0 end) as handoff_rate,
    count(quality_score) as scored_interactions,
    avg(quality_score) as mean_quality,
    quantile_cont(latency_s, 0.5) as latency_p50_s,
    quantile_cont(latency_s, 0.95) as latency_p95_s
from {{ ref('int_interactions_enriched') }}
group by tenant_id, day, model_version
