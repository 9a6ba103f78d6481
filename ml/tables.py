"""The one registry of warehouse tables: every table's columns (name, DuckDB type, description),
its key, the asset that writes it, and whether dbt reads it as a source.

Everything that needs a table layout reads it from here: ``ml.warehouse`` creates and extends
tables from it, the assets publish it as their ``dagster/column_schema`` (``assets/catalog.py``),
and dbt's ``models/staging/_sources.yml`` is generated from it (:func:`dbt_sources_yaml`; a test
fails when the file and the registry disagree: ``learnloop tables --write-dbt-sources`` rewrites it).

Column order matters: rows are inserted by position, and a table written by an older version gets
the columns it lacks by ``ALTER TABLE ... ADD COLUMN`` at the end. Add new columns at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

POLARS_TYPES: dict[str, pl.DataType] = {
    "VARCHAR": pl.String(), "DATE": pl.Date(), "BOOLEAN": pl.Boolean(), "DOUBLE": pl.Float64(),
    "BIGINT": pl.Int64(), "INTEGER": pl.Int32(), "TIMESTAMP": pl.Datetime("us"),
    "VARCHAR[]": pl.List(pl.String()),
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    description: str


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    asset: str  # the Dagster asset that writes it
    key: tuple[str, ...] = ()  # columns that identify a row (unique)
    partitioned: bool = False  # by partition_date (one landing day)
    dbt_source: bool = False  # read by the dbt project as a source
    primary: bool = True  # the asset's own table (False: a side table, e.g. attempts)
    # the columns holding free text (user, agent or upstream prose, raw records): what the PII
    # scrubber must have cleaned and the blocking residual-PII checks read; ids, hashes, enums,
    # paths and placeholders are not free text
    free_text: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: duplicate column names")
        unknown = [c.type for c in self.columns if c.type not in POLARS_TYPES]
        if unknown:
            raise ValueError(f"table {self.name}: unknown column types {unknown}")
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"table {self.name}: key columns {missing} are not columns")
        missing = [c for c in self.free_text if c not in names]
        if missing:
            raise ValueError(f"table {self.name}: free-text columns {missing} are not columns")

    @property
    def types(self) -> dict[str, str]:
        """name -> DuckDB type, in column order."""
        return {c.name: c.type for c in self.columns}

    def polars_schema(self) -> dict[str, pl.DataType]:
        return {c.name: POLARS_TYPES[c.type] for c in self.columns}


def _table(name: str, description: str, asset: str, columns: list[tuple[str, str, str]],
           **kw) -> Table:
    return Table(name, description, tuple(Column(*c) for c in columns), asset, **kw)


TABLE_LIST: list[Table] = [
    _table("raw_files", "The landing-zone files of each day, registered with size and checksum.",
           "raw_interactions", [
               ("partition_date", "DATE", "The landing day (folder date=YYYY-MM-DD)."),
               ("path", "VARCHAR", "Absolute path of the landing file."),
               ("size_bytes", "BIGINT", "File size when registered."),
               ("sha256", "VARCHAR", "SHA-256 of the file's bytes."),
               ("registered_at", "TIMESTAMP", "When the file was registered (UTC)."),
           ], key=("path",), partitioned=True),
    _table("interactions",
           "Validated, de-duplicated, PII-scrubbed interactions, one row per assistant turn "
           "(session ids keyed-hashed).", "interactions", [
               ("interaction_id", "VARCHAR", "Unique id of the assistant turn (the idempotency "
                                             "key)."),
               ("tenant_id", "VARCHAR", "The tenant (customer, bot) the turn belongs to."),
               ("session_id", "VARCHAR", "Keyed hash (HMAC-SHA256, hex) of the raw session id."),
               ("turn_index", "INTEGER", "Position of the turn in its session."),
               ("ts", "TIMESTAMP", "When the reply was given (UTC)."),
               ("channel", "VARCHAR", "Where the conversation happened (web, whatsapp, ...)."),
               ("model_provider", "VARCHAR", "Provider of the model that replied."),
               ("model_name", "VARCHAR", "Name of the model that replied."),
               ("model_version", "VARCHAR", "Version of the model that replied."),
               ("messages", "VARCHAR", "The context: JSON list of {role, content}, scrubbed."),
               ("user_message", "VARCHAR", "The last user message, scrubbed."),
               ("response", "VARCHAR", "The assistant reply being judged, scrubbed."),
               ("latency_ms", "DOUBLE", "Reply latency in milliseconds."),
               ("tokens_prompt", "BIGINT", "Prompt tokens."),
               ("tokens_completion", "BIGINT", "Completion tokens."),
               ("retrieval", "VARCHAR", "Sources the reply used (JSON), scrubbed; NULL when none."),
               ("feedback_rating", "INTEGER", "The user's rating, 1-5."),
               ("feedback_thumbs", "VARCHAR", "The user's thumbs: up or down."),
               ("feedback_comment", "VARCHAR", "The user's comment, scrubbed."),
               ("user_continued", "BOOLEAN", "The user went on with the conversation."),
               ("completed_action", "BOOLEAN", "The user completed the action the reply was for."),
               ("requested_human", "BOOLEAN", "The user asked for a human agent (handoff)."),
               ("abandoned", "BOOLEAN", "The user left the conversation."),
               ("accepted", "BOOLEAN", "The user accepted the reply (e.g. a suggestion)."),
               ("modified", "BOOLEAN", "The user modified the reply before using it."),
               ("time_to_first_use_s", "DOUBLE", "Seconds until the user first used the reply."),
               ("correction_agent_id", "VARCHAR", "The human agent who corrected the reply."),
               ("corrected_response", "VARCHAR", "The human agent's corrected reply, scrubbed."),
               ("correction_reason", "VARCHAR", "Why the agent corrected the reply."),
               ("correction_category", "VARCHAR", "The agent's category of the mistake."),
               ("intent", "VARCHAR", "The conversation's intent (metadata)."),
               ("language", "VARCHAR", "The conversation's language (metadata)."),
               ("tags", "VARCHAR[]", "Free tags of the record (metadata)."),
               ("pii_types", "VARCHAR[]", "Placeholder types the PII scrubber inserted."),
               ("source_file", "VARCHAR", "The landing file the record came from."),
               ("partition_date", "DATE", "The landing day."),
               ("conversation_rating", "INTEGER", "The user's rating of the whole conversation, "
                                                  "1-5 (the same on each of its turns)."),
               ("extra", "VARCHAR", "Fields outside the record contract, by path (JSON object, "
                                    "scrubbed), and a dropped empty correction; NULL when none."),
               ("ingest_notes", "VARCHAR[]", "What ingest changed in the record and why (e.g. "
                                             "an empty human_correction dropped)."),
           ], key=("tenant_id", "interaction_id"), partitioned=True, dbt_source=True,
           free_text=("messages", "user_message", "response", "retrieval", "feedback_comment",
                      "correction_agent_id", "corrected_response", "correction_reason",
                      "correction_category", "intent", "tags", "extra")),
    _table("quarantined_interactions",
           "Records that failed validation, with the reason and the PII-scrubbed raw text; an "
           "unreadable file is one row.", "quarantined_interactions", [
               ("source_file", "VARCHAR", "The landing file."),
               ("line_no", "BIGINT", "Line in the file (1-based); NULL for a whole file."),
               ("partition_date", "DATE", "The landing day."),
               ("interaction_id", "VARCHAR", "The record's id when it had a readable one."),
               ("reason", "VARCHAR", "What is wrong, naming the field(s)."),
               ("raw", "VARCHAR", "The raw text of the record, PII-scrubbed."),
               ("quarantine_key", "VARCHAR", "Identity of the rejected record: digest of its "
                                             "reason and unscrubbed raw text (of the file name "
                                             "for an unreadable file); unique across partitions, "
                                             "so a re-imported line is quarantined once."),
           ], key=("quarantine_key",), partitioned=True, dbt_source=True,
           free_text=("reason", "raw")),
    _table("interaction_quality",
           "The multi-dimensional quality score of each interaction (seed 003); NULL = the "
           "dimension is not measurable.", "interaction_quality", [
               ("interaction_id", "VARCHAR", "The interaction scored."),
               ("tenant_id", "VARCHAR", "Its tenant."),
               ("partition_date", "DATE", "The landing day."),
               ("model_version", "VARCHAR", "The model version that replied."),
               ("user_satisfaction", "DOUBLE", "0-1, from thumbs, rating and comment."),
               ("functional_correctness", "DOUBLE", "0-1, from completion and corrections."),
               ("context_relevance", "DOUBLE", "0-1, from continuation and handoff signals."),
               ("efficiency", "DOUBLE", "0-1, from latency and tokens."),
               ("quality_score", "DOUBLE", "Weighted mean over the dimensions present (weights "
                                           "renormalized)."),
               ("confidence", "DOUBLE", "0-1, from how much evidence the score rests on."),
               ("dimensions_present", "INTEGER", "How many dimensions could be measured."),
               ("scorer_version", "VARCHAR", "Version of the scoring rules."),
           ], key=("tenant_id", "interaction_id"), partitioned=True, dbt_source=True),
    _table("audit_candidates",
           "Each audit run's selection: the interactions to audit and why.", "audit_candidates", [
               ("interaction_id", "VARCHAR", "The interaction to audit."),
               ("tenant_id", "VARCHAR", "Its tenant."),
               ("partition_date", "DATE", "Its landing day."),
               ("reasons", "VARCHAR[]", "Why it was selected: negative_feedback, handoff, "
                                        "low_quality, human_correction, calibration, manual, retry."),
               ("auditor", "VARCHAR", "The auditor it was selected for."),
               ("prompt_version", "VARCHAR", "The auditor's prompt version."),
               ("selected_at", "TIMESTAMP", "When the run selected it (UTC)."),
               ("run_id", "VARCHAR", "The Dagster run (root run) that selected it."),
           ], key=("run_id", "tenant_id", "interaction_id")),
    _table("audited_errors",
           "The Auditor's verdict per audited interaction, auditor and prompt version (errors "
           "and clean verdicts alike, so error rates can be computed).", "audited_errors", [
               ("interaction_id", "VARCHAR", "The audited interaction."),
               ("tenant_id", "VARCHAR", "Its tenant."),
               ("partition_date", "DATE", "Its landing day."),
               ("auditor", "VARCHAR", "rules, or llm:<provider>/<model>,..."),
               ("prompt_version", "VARCHAR", "Version of the auditor's prompt or rules."),
               ("is_error", "BOOLEAN", "The reply is an error."),
               ("category", "VARCHAR", "Error category (taxonomy); NULL when clean."),
               ("severity", "VARCHAR", "low, medium, high, critical; NULL when clean."),
               ("confidence", "DOUBLE", "The auditor's confidence, 0-1."),
               ("explanation", "VARCHAR", "Why, in the auditor's words."),
               ("signals", "VARCHAR[]", "The rules and signals that fired."),
               ("answered_by", "VARCHAR", "Which provider answered (rules: rules)."),
               ("audited_at", "TIMESTAMP", "When (UTC)."),
               ("in_calibration", "BOOLEAN", "The interaction is in the seeded random calibration "
                                             "sample of audit_candidates."),
               ("label_weight", "DOUBLE", "Inverse probability that the verdict got a review "
                                          "item (1 for a flag, 1/clean_review_rate for a clean "
                                          "verdict put to review); NULL outside the sample."),
           ], key=("tenant_id", "interaction_id", "auditor", "prompt_version"), dbt_source=True),
    _table("audit_passed_over",
           "The interactions the scheduled audit selection looked at and passed over (no reason "
           "to audit), per selection (auditor, prompt version and selection settings), with a "
           "hash of the inputs it decided on: the next run skips them unless those inputs "
           "changed, so a run reads only new work.", "audit_candidates", [
               ("selection", "VARCHAR", "Auditor, prompt version and selection settings "
                                        "(ml.audit.candidates.selection_fingerprint)."),
               ("tenant_id", "VARCHAR", "The interaction's tenant."),
               ("interaction_id", "VARCHAR", "The interaction passed over."),
               ("inputs_hash", "BIGINT", "Hash of the feedback, handoff, correction, conversation "
                                         "rating and quality score the selection read."),
               ("seen_at", "TIMESTAMP", "When it was passed over (UTC)."),
           ], key=("selection", "tenant_id", "interaction_id"), primary=False),
    _table("teacher_attempts",
           "Every LLM teacher attempt per interaction, teacher and prompt version: failed with "
           "the provider's reason, or ok.", "teacher_samples", [
               ("interaction_id", "VARCHAR", "The interaction the proposal was for."),
               ("tenant_id", "VARCHAR", "Its tenant."),
               ("error_item_id", "BIGINT", "The error review item the proposal was for."),
               ("teacher", "VARCHAR", "llm:<provider>/<model>,..."),
               ("prompt_version", "VARCHAR", "Version of the teacher's prompt."),
               ("status", "VARCHAR", "failed or ok."),
               ("reason", "VARCHAR", "The provider error of the last failed attempt, with its "
                                     "class prefix; NULL when ok."),
               ("attempts", "BIGINT", "Attempts so far (failed and ok)."),
               ("first_attempt_at", "TIMESTAMP", "First attempt (UTC)."),
               ("updated_at", "TIMESTAMP", "Last attempt (UTC)."),
               ("run_id", "VARCHAR", "The Dagster run of the last attempt."),
               ("counted_attempts", "BIGINT", "Request-specific failures so far (outages are not "
                                              "counted); the retry cap compares this."),
           ], key=("tenant_id", "interaction_id", "teacher", "prompt_version"), primary=False),
    _table("preference_pairs",
           "Preference pairs for DPO: rejected = the assistant's original reply, chosen = the "
           "approved or edited correction; rebuilt from the operational store.",
           "preference_pairs", [
               ("sample_item_id", "BIGINT", "The approved sample review item."),
               ("error_item_id", "BIGINT", "Its parent error item, when there is one."),
               ("interaction_id", "VARCHAR", "The interaction."),
               ("tenant_id", "VARCHAR", "Its tenant."),
               ("prompt", "VARCHAR", "The last user message."),
               ("messages", "VARCHAR", "The context of the reply: JSON list of {role, content}."),
               ("chosen", "VARCHAR", "The approved or edited reply."),
               ("rejected", "VARCHAR", "The assistant's original reply."),
               ("source", "VARCHAR", "Who proposed the chosen reply: human_agent, retrieval, "
                                     "llm:<provider>."),
               ("status", "VARCHAR", "approved or edited."),
               ("category", "VARCHAR", "The error category."),
               ("decided_by", "VARCHAR", "The reviewer."),
               ("decided_at", "TIMESTAMP", "When the reviewer decided (UTC)."),
           ], key=("sample_item_id",)),
    _table("review_decisions",
           "Append-only copy of the review events (creations, decisions, tags) of the "
           "operational store, incremental on the event id.", "review_decisions", [
               ("event_id", "BIGINT", "The review event's id (increasing)."),
               ("item_id", "BIGINT", "The review item."),
               ("kind", "VARCHAR", "error or sample."),
               ("tenant_id", "VARCHAR", "The item's tenant."),
               ("interaction_id", "VARCHAR", "The item's interaction."),
               ("actor", "VARCHAR", "Who: a reviewer, auditor:<name>, teacher:<source>."),
               ("action", "VARCHAR", "created, decide or tag."),
               ("status_before", "VARCHAR", "The item's status before the event."),
               ("status_after", "VARCHAR", "The item's status after the event."),
               ("note", "VARCHAR", "The reviewer's note."),
               ("event_at", "TIMESTAMP", "When (UTC)."),
               ("auditor", "VARCHAR", "The item's auditor."),
               ("prompt_version", "VARCHAR", "The item's auditor prompt version."),
               ("category", "VARCHAR", "The item's category."),
               ("severity", "VARCHAR", "The item's severity."),
               ("source", "VARCHAR", "A sample item's source."),
           ], key=("event_id",), dbt_source=True),
    _table("model_evaluations",
           "Scores of each candidate evaluation: one row per evaluation, model (the candidate or "
           "the champion it was compared with) and set (eval, retention, must_refuse); "
           "append-only.", "candidate_evaluation", [
               ("evaluation_id", "BIGINT", "The evaluation (operational store model_evaluations.id)."),
               ("model_role", "VARCHAR", "candidate or champion."),
               ("eval_set", "VARCHAR", "eval (held-out corrections), retention (good historical "
                                       "interactions) or must_refuse (prompts to refuse)."),
               ("model_name", "VARCHAR", "The registered model."),
               ("model_version", "VARCHAR", "The registry version scored in this row."),
               ("candidate_version", "VARCHAR", "The candidate of the evaluation."),
               ("champion_version", "VARCHAR", "The champion it was compared with."),
               ("eval_suite_version", "VARCHAR", "Version hash of the evaluation suite."),
               ("dataset_version", "VARCHAR", "Version hash of the candidate's training dataset."),
               ("n_items", "BIGINT", "Items scored."),
               ("rouge_l", "DOUBLE", "ROUGE-L F1 against the reference reply (0-1)."),
               ("rouge_1", "DOUBLE", "ROUGE-1 F1 (0-1)."),
               ("rouge_2", "DOUBLE", "ROUGE-2 F1 (0-1)."),
               ("bleu", "DOUBLE", "Corpus BLEU (sacrebleu score / 100, 0-1)."),
               ("exact_match", "DOUBLE", "Share of replies equal to the reference (normalised)."),
               ("perplexity", "DOUBLE", "Perplexity of the reference replies (local models)."),
               ("latency_mean_s", "DOUBLE", "Mean generation latency per reply (s)."),
               ("latency_p95_s", "DOUBLE", "95th percentile generation latency per reply (s)."),
               ("refusal_rate", "DOUBLE", "Share of must-refuse prompts refused."),
               ("judge_win_rate", "DOUBLE", "Candidate's pairwise LLM-judge win rate (null "
                                            "without a judge)."),
               ("gate_passed", "BOOLEAN", "Whether the candidate passed the quality gate."),
               ("evaluated_at", "TIMESTAMP", "When the evaluation was recorded (UTC)."),
           ], key=("evaluation_id", "model_role", "eval_set"), dbt_source=True),
]

TABLES: dict[str, Table] = {t.name: t for t in TABLE_LIST}

# the layouts under the names the stages use
INTERACTION_COLUMNS = TABLES["interactions"].types
QUARANTINE_COLUMNS = TABLES["quarantined_interactions"].types
QUALITY_COLUMNS = TABLES["interaction_quality"].types
CANDIDATE_COLUMNS = TABLES["audit_candidates"].types
AUDITED_COLUMNS = TABLES["audited_errors"].types
TEACHER_ATTEMPT_COLUMNS = TABLES["teacher_attempts"].types
PREFERENCE_COLUMNS = TABLES["preference_pairs"].types
REVIEW_DECISION_COLUMNS = TABLES["review_decisions"].types


def table(name: str) -> Table:
    """The registered table ``name``; a clear error naming the known ones otherwise."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"no warehouse table {name!r} in ml.tables; known: {sorted(TABLES)}") from None


def tables_of_asset(asset: str) -> list[Table]:
    """The tables the asset ``asset`` writes."""
    return [t for t in TABLE_LIST if t.asset == asset]


def primary_table(asset: str) -> Table | None:
    """The asset's own table (the one its column schema shows), if it writes one."""
    own = [t for t in tables_of_asset(asset) if t.primary]
    return own[0] if own else None


def dbt_sources_yaml() -> str:
    """The text of dbt's ``models/staging/_sources.yml``: every ``dbt_source`` table with its
    description, its columns (name, data_type, description) and ``meta.dagster.asset_key`` (the
    asset that writes it, which dagster-dbt reads to put dbt's models downstream of it)."""
    def q(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# Generated from ml/tables.py (the table registry): do not edit by hand.",
        "# Rewrite with `learnloop tables --write-dbt-sources`; tests/ml/test_tables.py fails when",
        "# this file and the registry disagree.",
        "version: 2",
        "",
        "sources:",
        "  - name: warehouse",
        "    description: >",
        "      Tables written by learnloop's Dagster assets into the DuckDB warehouse (schema main).",
        "      Each maps to the asset that writes it (meta.dagster.asset_key).",
        "    schema: main",
        "    tables:",
    ]
    for t in TABLE_LIST:
        if not t.dbt_source:
            continue
        lines += [
            f"      - name: {t.name}",
            f"        description: {q(t.description)}",
            "        meta:",
            "          dagster:",
            f"            asset_key: [{t.asset}]",
            "        columns:",
        ]
        for c in t.columns:
            lines += [f"          - name: {c.name}",
                      f"            data_type: {q(c.type)}",
                      f"            description: {q(c.description)}"]
    return "\n".join(lines) + "\n"
