-- A/B experiments as served: one row per experiment, arm and model version, from the replies the
-- learnloop serving API gave (model_provider = 'learnloop') while an experiment routed them. Such
-- a reply carries the tags 'experiment:<id>' (the operational store's experiments.id) and
-- 'arm:<arm>' (control = the champion, treatment = the challenger). A tag 'experiment:<x>' whose
-- <x> is not an integer is not an experiment of learnloop's and is left out; a reply with an
-- experiment tag but no single arm tag keeps arm NULL, which fails the not_null test (the serving
-- API never writes one). Empty until the serving API has served an experiment.
with served as (
    select
        *,
        unnest(list_filter(tags, lambda t: regexp_full_match(t, 'experiment:[0-9]+')))
            as experiment_tag,
        list_distinct(list_filter(tags, lambda t: starts_with(t, 'arm:'))) as arm_tags
    from {{ ref('int_interaction_outcomes') }}
    where model_provider = 'learnloop'
),

arms as (
    select
        cast(substr(experiment_tag, length('experiment:') + 1) as bigint) as experiment_id,
        case when len(arm_tags) = 1 then substr(arm_tags[1], length('arm:') + 1) end as arm,
        *
    from served
)

select
    experiment_id,
    arm,
    model_name,
    model_version,
    {{ performance_metrics() }}
from arms
group by experiment_id, arm, model_name, model_version
