-- Interactions joined to their quality score, with the derived flags every mart counts.
-- Boolean signals that were not reported (NULL) count as false in the flags.
with interactions as (
    select * from {{ ref('stg_interactions') }}
),

quality as (
    select * from {{ ref('stg_interaction_quality') }}
)

select
    i.interaction_id,
    i.tenant_id,
    i.session_id,
    i.turn_index,
    i.ts,
    i.event_date,
    i.partition_date as day,
    i.channel,
    i.model_provider,
    i.model_name,
    coalesce(i.model_version, 'unknown') as model_version,
    i.intent,
    i.language,
    i.tags,
    i.latency_ms,
    i.latency_ms / 1000.0 as latency_s,
    i.tokens_prompt,
    i.tokens_completion,
    i.feedback_rating,
    i.feedback_thumbs,
    coalesce(i.feedback_thumbs = 'up', false) as thumbs_up,
    coalesce(i.feedback_thumbs = 'down', false) as thumbs_down,
    i.feedback_thumbs is not null as has_thumbs,
    (
        i.feedback_rating is not null
        or i.feedback_thumbs is not null
        or nullif(trim(i.feedback_comment), '') is not null
    ) as has_feedback,
    i.corrected_response is not null as has_correction,
    (coalesce(i.requested_human, false) or i.corrected_response is not null) as handoff,
    coalesce(i.abandoned, false) as abandoned,
    i.user_continued,
    i.completed_action,
    i.requested_human,
    i.accepted,
    i.modified,
    i.time_to_first_use_s,
    i.correction_category,
    q.interaction_id is not null as is_scored,
    q.quality_score,
    q.confidence as quality_confidence,
    q.user_satisfaction,
    q.functional_correctness,
    q.context_relevance,
    q.efficiency,
    q.dimensions_present,
    q.scorer_version,
    q.quality_score < {{ var('low_quality_threshold') }} as is_low_quality
from interactions as i
left join quality as q
    on i.tenant_id = q.tenant_id and i.interaction_id = q.interaction_id
