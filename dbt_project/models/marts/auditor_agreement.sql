-- How often reviewers agree with each auditor and prompt version.
--
-- Reference label per audited interaction: the reviewer's latest decision on the auditor's
-- `error` review item: confirmed = error, dismissed = no error. Flagged verdicts get such an item;
-- so does a configurable share of the clean verdicts on the calibration sample (a "no error found"
-- item, audited_errors.clean_review_rate), so false negatives and true negatives get labels too.
--
-- A human agent's correction is NOT a reference label for an auditor that reads corrections as an
-- input (the rules auditor's human_correction signal; the LLM auditors' evidence text): it would
-- flag every corrected reply and score recall ~1 by construction. Such agreement is reported apart
-- (correction_* columns). Only auditors named in the dbt var `correction_blind_auditors` (default:
-- none) have corrections of undecided verdicts counted as "error" labels.
--   precision = reviewer-confirmed / reviewer-decided among the auditor's flags
--   recall    = tp / (tp + fn) over labeled verdicts
--   kappa     = Cohen's kappa between the auditor's verdict and the reference label
{% set blind = var('correction_blind_auditors', []) %}
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
    select distinct interaction_id
    from {{ ref('stg_interactions') }}
    where corrected_response is not null
),

labeled as (
    select
        v.auditor,
        v.prompt_version,
        v.is_error as predicted,
        d.status_after as decision,
        c.interaction_id is not null as corrected,
        case
            when d.status_after = 'confirmed' then true
            when d.status_after = 'dismissed' then false
            {% if blind %}
            when c.interaction_id is not null and v.auditor in (
                {%- for a in blind %}'{{ a }}'{% if not loop.last %}, {% endif %}{% endfor -%}
            ) then true
            {% endif %}
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
        count(*) filter (where not predicted and decision in ('confirmed', 'dismissed'))
            as negatives_reviewed,
        count(*) filter (where actual is not null) as labeled,
        count(*) filter (where predicted and actual) as tp,
        count(*) filter (where predicted and actual = false) as fp,
        count(*) filter (where not predicted and actual) as fn,
        count(*) filter (where not predicted and actual = false) as tn,
        count(*) filter (where corrected) as correction_labeled,
        count(*) filter (where corrected and predicted) as correction_flagged
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
    negatives_reviewed,
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
    end as cohens_kappa,
    correction_labeled,
    correction_flagged,
    correction_flagged / nullif(correction_labeled, 0) as correction_recall
from rates
