-- One row per rejected record. The tenant is read from the raw text when it is a JSON object
-- (records without a tenant_id belong to 'default', as in ml.schema.InteractionRecord);
-- unparseable raw text, or a tenant_id that is not a non-empty string, gets tenant 'unknown'.
-- quarantine_key identifies the rejected record (ml/ingest/quarantine.py): unique across days.
select
    source_file,
    line_no,
    partition_date,
    interaction_id,
    reason,
    raw,
    case
        when raw is null or not coalesce(json_valid(raw), false) then 'unknown'
        when json_type(raw) <> 'OBJECT' then 'unknown'
        when json_type(raw, '$.tenant_id') is null then 'default'
        when json_type(raw, '$.tenant_id') = 'VARCHAR'
            then coalesce(nullif(json_extract_string(raw, '$.tenant_id'), ''), 'unknown')
        else 'unknown'
    end as tenant_id,
    quarantine_key
from {{ source('warehouse', 'quarantined_interactions') }}
