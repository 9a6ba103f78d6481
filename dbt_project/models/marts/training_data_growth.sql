-- How the approved training data grows: reviewers' decisions on `sample` review items per day
-- (UTC date of the decision), tenant, source (human_agent, retrieval, llm:<provider>) and category
-- (the error category the sample corrects; 'uncategorized' when it has none).
--
-- Each item counts once, with its current decision on the day it was made (the latest `decide`
-- event of the item): approved, edited (approved with the reviewer's text) or rejected.
-- new_approved = approved + edited. The series is dense: every (tenant, source, category) has a
-- row for each day from its first decision to the last decision day of the warehouse (zeros on
-- quiet days), so cumulative_approved can be charted without gaps.
with decisions as (
    select
        tenant_id,
        coalesce(source, 'unknown') as source,
        coalesce(category, 'uncategorized') as category,
        status_after,
        cast(event_at as date) as day
    from {{ ref('stg_review_decisions') }}
    where kind = 'sample' and action = 'decide'
    qualify row_number() over (partition by item_id order by event_id desc) = 1
),

daily as (
    select
        day,
        tenant_id,
        source,
        category,
        count(*) filter (where status_after = 'approved') as approved,
        count(*) filter (where status_after = 'edited') as edited,
        count(*) filter (where status_after = 'rejected') as rejected
    from decisions
    where status_after in ('approved', 'edited', 'rejected')
    group by all
),

calendar as (
    select
        g.tenant_id,
        g.source,
        g.category,
        cast(unnest(generate_series(g.first_day, m.last_day, interval 1 day)) as date) as day
    from (
        select tenant_id, source, category, min(day) as first_day
        from daily
        group by all
    ) as g
    cross join (select max(day) as last_day from daily) as m
),

filled as (
    select
        c.day,
        c.tenant_id,
        c.source,
        c.category,
        coalesce(d.approved, 0) as approved,
        coalesce(d.edited, 0) as edited,
        coalesce(d.rejected, 0) as rejected
    from calendar as c
    left join daily as d using (day, tenant_id, source, category)
),

running as (
    select
        *,
        approved + edited as new_approved,
        sum(approved + edited) over growth as cumulative_approved,
        sum(rejected) over growth as cumulative_rejected
    from filled
    window growth as (
        partition by tenant_id, source, category
        order by day
        rows between unbounded preceding and current row
    )
)

select
    md5(concat_ws('|', strftime(day, '%Y-%m-%d'), tenant_id, source, category))
        as training_data_growth_id,
    day,
    tenant_id,
    source,
    category,
    approved,
    edited,
    new_approved,
    rejected,
    new_approved + rejected as decided,
    new_approved / nullif(new_approved + rejected, 0) as approval_rate,
    cast(cumulative_approved as bigint) as cumulative_approved,
    cast(cumulative_rejected as bigint) as cumulative_rejected,
    cumulative_approved / nullif(cumulative_approved + cumulative_rejected, 0)
        as cumulative_approval_rate
from running
