-- How often reviewers agree with each auditor and prompt version.
--
-- Reference label per audited interaction: the reviewer's latest decision on the auditor's
-- `error` review item: confirmed = error, dismissed = no error. Every flagged verdict gets such an
-- item; a clean verdict only does on the calibration sample (a seeded random share,
-- audit_candidates.calibration_rate, of the interactions no signal pointed at), and there only for
-- a stable hash draw below audited_errors.clean_review_rate (a "no error found" item).
--
-- A human agent's correction is NOT a reference label for an auditor that reads corrections as an
-- input (the rules auditor's human_correction signal; the LLM auditors' evidence text): it would
-- flag every corrected reply and score recall ~1 by construction. Such agreement is reported apart
-- (correction_* columns). Only auditors named in the dbt var `correction_blind_auditors` (default:
-- none) have corrections of undecided verdicts counted as "error" labels (raw counts only:
-- corrected interactions are signalled, so never in the calibration sample).
--
--   precision = reviewer-confirmed / reviewer-decided among ALL the auditor's flags (every flag
--               gets an item, so the decided flags are the flags' own sample)
--   recall, cohens_kappa: estimated on the calibration sample only, each labeled verdict weighted
--               by the inverse of its probability of getting a review item (audited_errors
--               .label_weight, ml.audit.labels): a flag 1, a clean verdict put to review
--               1 / clean_review_rate. With weighted counts TP, FP, FN, TN (N = their sum):
--                 recall = TP / (TP + FN)
--                 kappa  = (po - pe) / (1 - pe), po = (TP + TN) / N,
--                          pe = ((TP + FP)(TP + FN) + (FN + TN)(FP + TN)) / N^2
--               NULL without calibration labels. Counting all labels unweighted (labeled/tp/fp/
--               fn/tn below) mixes every reviewed flag with ~1% of the misses: recall ~1.
--               The estimate describes the interactions no signal pointed at (the population
--               the calibration sample is drawn from), not the signalled ones.
{% set blind = var('correction_blind_auditors', []) %}
with verdicts as (
    select interaction_id, auditor, prompt_version, is_error, in_calibration, label_weight
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
        end as actual,
        -- weight of the label in the calibration-sample estimate; NULL = not in it
        case
            when coalesce(v.in_calibration, false) and d.status_after in ('confirmed', 'dismissed')
                then v.label_weight
        end as weight
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
        -- raw (unweighted) label counts over all verdicts: NOT a recall estimate
        count(*) filter (where actual is not null) as labeled,
        count(*) filter (where predicted and actual) as tp,
        count(*) filter (where predicted and actual = false) as fp,
        count(*) filter (where not predicted and actual) as fn,
        count(*) filter (where not predicted and actual = false) as tn,
        -- the calibration-sample estimate
        count(weight) as calibration_labeled,
        coalesce(sum(weight) filter (where predicted and decision = 'confirmed'), 0)
            as weighted_tp,
        coalesce(sum(weight) filter (where predicted and decision = 'dismissed'), 0)
            as weighted_fp,
        coalesce(sum(weight) filter (where not predicted and decision = 'confirmed'), 0)
            as weighted_fn,
        coalesce(sum(weight) filter (where not predicted and decision = 'dismissed'), 0)
            as weighted_tn,
        count(*) filter (where corrected) as correction_labeled,
        count(*) filter (where corrected and predicted) as correction_flagged
    from labeled
    group by all
),

rates as (
    select
        *,
        weighted_tp + weighted_fp + weighted_fn + weighted_tn as weighted_n,
        (weighted_tp + weighted_tn) / nullif(weighted_n, 0) as observed_agreement,
        ((weighted_tp + weighted_fp) * (weighted_tp + weighted_fn)
            + (weighted_fn + weighted_tn) * (weighted_fp + weighted_tn))
            / nullif(weighted_n * weighted_n, 0) as expected_agreement
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
    calibration_labeled,
    weighted_tp,
    weighted_fp,
    weighted_fn,
    weighted_tn,
    confirmed / nullif(confirmed + dismissed, 0) as precision,
    case when calibration_labeled > 0 then weighted_tp / nullif(weighted_tp + weighted_fn, 0) end
        as recall,
    case
        when calibration_labeled = 0 or expected_agreement is null or expected_agreement >= 1
            then null
        else (observed_agreement - expected_agreement) / (1 - expected_agreement)
    end as cohens_kappa,
    correction_labeled,
    correction_flagged,
    correction_flagged / nullif(correction_labeled, 0) as correction_recall
from rates
