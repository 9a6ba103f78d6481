-- Flagged errors over time: per landing day, tenant, auditor, prompt version and category, with the
-- error rate among everything that auditor audited that day.
with audited as (
    select
        partition_date as day,
        tenant_id,
        auditor,
        prompt_version,
        count(*) as audited
    from {{ ref('stg_audited_errors') }}
    group by all
),

flagged as (
    select
        partition_date as day,
        tenant_id,
        auditor,
        prompt_version,
        category,
        count(*) as errors,
        count(*) filter (where severity in ('high', 'critical')) as severe_errors,
        avg(confidence) as mean_confidence
    from {{ ref('stg_audited_errors') }}
    where is_error
    group by all
)

select
    md5(concat_ws('|', f.day, f.tenant_id, f.auditor, f.prompt_version, f.category))
        as error_trend_id,
    f.day,
    f.tenant_id,
    f.auditor,
    f.prompt_version,
    f.category,
    f.errors,
    f.severe_errors,
    f.mean_confidence,
    a.audited,
    f.errors / a.audited as error_rate
from flagged as f
join audited as a using (day, tenant_id, auditor, prompt_version)
