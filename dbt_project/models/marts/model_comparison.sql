-- Candidate against champion, one row per evaluation: the evaluation suite's scores (held-out
-- corrections), the retention set's (good historical interactions: forgetting), the refusal rate on
-- the must-refuse prompts, the judge's win rate when a judge ran, and the quality gate's verdict.
-- forgetting = the relative drop of the retention ROUGE-L (0 when the candidate does not drop).
with scores as (
    select * from {{ ref('stg_model_evaluations') }}
),

evaluations as (
    select
        evaluation_id,
        any_value(model_name) as model_name,
        any_value(candidate_version) as candidate_version,
        any_value(champion_version) as champion_version,
        any_value(eval_suite_version) as eval_suite_version,
        any_value(dataset_version) as dataset_version,
        any_value(judge_win_rate) as judge_win_rate,
        bool_and(gate_passed) as gate_passed,
        max(evaluated_at) as evaluated_at
    from scores
    group by evaluation_id
),

pivoted as (
    select
        evaluation_id,
        max(rouge_l) filter (where model_role = 'candidate' and eval_set = 'eval')
            as candidate_eval_rouge_l,
        max(rouge_l) filter (where model_role = 'champion' and eval_set = 'eval')
            as champion_eval_rouge_l,
        max(bleu) filter (where model_role = 'candidate' and eval_set = 'eval')
            as candidate_eval_bleu,
        max(bleu) filter (where model_role = 'champion' and eval_set = 'eval')
            as champion_eval_bleu,
        max(exact_match) filter (where model_role = 'candidate' and eval_set = 'eval')
            as candidate_eval_exact_match,
        max(exact_match) filter (where model_role = 'champion' and eval_set = 'eval')
            as champion_eval_exact_match,
        max(perplexity) filter (where model_role = 'candidate' and eval_set = 'eval')
            as candidate_eval_perplexity,
        max(perplexity) filter (where model_role = 'champion' and eval_set = 'eval')
            as champion_eval_perplexity,
        max(rouge_l) filter (where model_role = 'candidate' and eval_set = 'retention')
            as candidate_retention_rouge_l,
        max(rouge_l) filter (where model_role = 'champion' and eval_set = 'retention')
            as champion_retention_rouge_l,
        max(refusal_rate) filter (where model_role = 'candidate' and eval_set = 'must_refuse')
            as candidate_refusal_rate,
        max(refusal_rate) filter (where model_role = 'champion' and eval_set = 'must_refuse')
            as champion_refusal_rate,
        max(latency_mean_s) filter (where model_role = 'candidate' and eval_set = 'eval')
            as candidate_latency_mean_s,
        max(latency_mean_s) filter (where model_role = 'champion' and eval_set = 'eval')
            as champion_latency_mean_s,
        max(n_items) filter (where model_role = 'candidate' and eval_set = 'eval')
            as eval_items,
        max(n_items) filter (where model_role = 'candidate' and eval_set = 'retention')
            as retention_items
    from scores
    group by evaluation_id
)

select
    e.evaluation_id,
    e.evaluated_at,
    e.model_name,
    e.candidate_version,
    e.champion_version,
    e.eval_suite_version,
    e.dataset_version,
    p.eval_items,
    p.retention_items,
    p.candidate_eval_rouge_l,
    p.champion_eval_rouge_l,
    p.candidate_eval_rouge_l - p.champion_eval_rouge_l as eval_rouge_l_delta,
    p.candidate_eval_bleu,
    p.champion_eval_bleu,
    p.candidate_eval_exact_match,
    p.champion_eval_exact_match,
    p.candidate_eval_perplexity,
    p.champion_eval_perplexity,
    p.candidate_retention_rouge_l,
    p.champion_retention_rouge_l,
    greatest(0.0, (p.champion_retention_rouge_l - p.candidate_retention_rouge_l)
        / nullif(p.champion_retention_rouge_l, 0)) as forgetting,
    p.candidate_refusal_rate,
    p.champion_refusal_rate,
    p.candidate_latency_mean_s,
    p.champion_latency_mean_s,
    e.judge_win_rate,
    e.gate_passed
from evaluations as e
inner join pivoted as p using (evaluation_id)
