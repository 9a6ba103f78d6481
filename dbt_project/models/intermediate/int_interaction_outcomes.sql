-- One row per interaction with what the model-performance marts count: the feedback and handoff
-- signals, the quality score and the Auditor's latest verdict. `day` here is the UTC date of `ts`
-- (when the model replied), not the landing day: a backfill of old logs lands today but belongs
-- to the days its model served it.
--
-- The latest verdict: of all the verdicts on the interaction (any auditor, any prompt version),
-- the one written last (audited_at; ties broken by auditor and prompt version, so the choice is
-- stable). An interaction without a verdict is not audited: it counts in neither the numerator
-- nor the denominator of the auditor error rate.
with interactions as (
    select * from {{ ref('int_interactions_enriched') }}
),

latest_verdicts as (
    select
        tenant_id,
        interaction_id,
        is_error
    from {{ ref('stg_audited_errors') }}
    qualify row_number() over (
        partition by tenant_id, interaction_id
        order by audited_at desc nulls last, auditor desc, prompt_version desc
    ) = 1
)

select
    i.tenant_id,
    i.interaction_id,
    i.ts,
    i.event_date as day,
    i.model_provider,
    coalesce(i.model_name, 'unknown') as model_name,
    i.model_version,
    i.tags,
    i.has_thumbs,
    i.thumbs_up,
    i.feedback_rating,
    i.requested_human,
    i.quality_score,
    v.interaction_id is not null as is_audited,
    coalesce(v.is_error, false) as is_audited_error
from interactions as i
left join latest_verdicts as v
    on i.tenant_id = v.tenant_id and i.interaction_id = v.interaction_id
