{#
    The aggregate columns model_performance and experiment_arms share, over rows of
    int_interaction_outcomes (one per interaction). Counts come with every rate, so a consumer
    can pool rows (e.g. seven days of one version) without averaging averages:
      thumbs_up_rate     = thumbs_up / thumbs_given          (NULL when no thumbs were given)
      mean_rating        = mean of the 1-5 ratings given     (NULL when none)
      handoff_rate       = handoffs / handoff_signals        (requested_human true among the
                                                              rows that report the signal)
      auditor_error_rate = audited_errors / audited          (latest verdict per interaction)
      mean_quality_score = mean quality_score over `scored`  (interaction_quality)
#}
{% macro performance_metrics() %}
    count(*) as interactions,
    count(*) filter (where has_thumbs) as thumbs_given,
    count(*) filter (where thumbs_up) as thumbs_up,
    count(*) filter (where thumbs_up) / nullif(count(*) filter (where has_thumbs), 0)
        as thumbs_up_rate,
    count(feedback_rating) as ratings_given,
    avg(feedback_rating) as mean_rating,
    count(requested_human) as handoff_signals,
    count(*) filter (where requested_human) as handoffs,
    count(*) filter (where requested_human) / nullif(count(requested_human), 0) as handoff_rate,
    count(*) filter (where is_audited) as audited,
    count(*) filter (where is_audited_error) as audited_errors,
    count(*) filter (where is_audited_error) / nullif(count(*) filter (where is_audited), 0)
        as auditor_error_rate,
    count(quality_score) as scored,
    avg(quality_score) as mean_quality_score,
    min(ts) as first_ts,
    max(ts) as last_ts
{% endmacro %}
