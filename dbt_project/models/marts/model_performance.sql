-- How each model version does in production, per UTC day of its replies: volume, thumbs-up rate,
-- mean rating, handoff rate, the Auditor's error rate (latest verdict per interaction) and the
-- mean quality score, with the counts behind every rate (macros/performance_metrics.sql).
-- Every interaction counts, whoever served it (imported logs and the learnloop serving API).
select
    model_name,
    model_version,
    day,
    {{ performance_metrics() }}
from {{ ref('int_interaction_outcomes') }}
group by model_name, model_version, day
