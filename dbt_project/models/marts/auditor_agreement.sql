-- How often reviewers agree with each auditor and prompt version.
--
-- Reference label per audited interaction: the reviewer's latest decision on the auditor's error
-- item (confirmed = error, dismissed = no error) when there is one; otherwise, where a human agent
-- corrected the reply, "error" (the correction is the evidence). Interactions with neither are
-- unlabeled and left out.
--   precision = reviewer-confirmed / reviewer-decided among the auditor's flags
--   recall    = flagged / labeled errors (where known)
--   kappa     = Cohen's kappa between the auditor's verdict and the reference label
with verdicts as (
    select interaction_id, auditor, prompt_version, is_error
    from {{ ref('stg_audited_errors') }}
),

latest_decision as (
    select interaction_id, auditor, prompt_version, status_after
    from {{ ref('stg_review_decisions') }}
    where kind = 'error' and action = 'decide'
    qualify row_number() over (
        partition by interaction_id, auditor, prompt_version order by event_id desc
    ) = 1
),

corrections as (
    select interaction_id
    from {{ ref('stg_interactions') }}
    where corrected_response is not null
),

labeled as (
    select
        v.auditor,
        v.prompt_version,
        v.is_error as predicted,
        d.status_after as decision,
        case
            when d.status_after = 'confirmed' then true
            when d.status_after = 'dismissed' then false
            when c.interaction_id is not null then true
        end as actual
    from verdicts as v
    left join latest_decision as d using (interaction_id, auditor, prompt_version)
    left join corrections as c using (interaction_id)
),

counts as (
    select
        auditor,
        prompt_version,
        count(*) as audited,
        count(*) filter (where predicted) as flagged,
        count(*) filter (where predicted and decision = 'confirmed') as confirmed,
        count(*) filter (where predicted and decision = 'dismissed') as dismissed,
        count(*) filter (where actual is not null) as labeled,
        count(*) filter (where predicted and actual) as tp,
        count(*) filter (where predicted and actual = false) as fp,
        count(*) filter (where not predicted and actual) as fn,
        count(*) filter (where not predicted and actual = false) as tn
    from labeled
    group by all
),

rates as (
    select
        *,
        (tp + tn) / nullif(labeled, 0) as observed_agreement,
        ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / nullif(labeled * labeled, 0)
            as expected_agreement
    from counts
)

select
    md5(concat_ws('|', auditor, prompt_version)) as auditor_agreement_id,
    auditor,
    prompt_version,
    audited,
    flagged,
    confirmed,
    dismissed,
    labeled,
    tp,
    fp,
    fn,
    tn,
    confirmed / nullif(confirmed + dismissed, 0) as precision,
    tp / nullif(tp + fn, 0) as recall,
    case
        when expected_agreement = 1 then null
        else (observed_agreement - expected_agreement) / (1 - expected_agreement)
    end as cohens_kappa
from rates
