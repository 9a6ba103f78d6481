"""The rules-and-signals Auditor: the offline default (DESIGN.md, "Offline defaults").

``audit_rules(frame) -> verdicts`` runs vectorized over a Polars frame of interactions (the columns
of the ``interactions`` table (``ml.tables``); optionally ``quality_score`` from ``interaction_quality``,
``qa_relevance`` from ``interaction_embeddings`` and ``response_raw``, the unscrubbed reply).

Each *signal* is a boolean expression with a weight (how likely the reply is wrong when it fires)
and, for most, the category it points to. A reply's error confidence is the noisy-OR of the
weights of the signals that fired, ``1 - prod(1 - w)``; it is an error when that reaches
``RuleThresholds.error_threshold``. Its category is the category of the strongest categorised
signal that fired (a human correction's own category first), else the category the user's comment
names; with neither (negative feedback, a handoff or a correction nobody explained) it is
``user_reported``: someone said the reply is bad and no rule can say why, so the cause is for the
reviewer (or an LLM auditor) to find. Severity is the category's default (``taxonomy.DEFAULT_SEVERITY``), with an
empty reply raised to high and an error resting on weak evidence lowered to low.

Feedback precedence (docs/auditing.md): turn-level negative feedback (thumbs down, rating <= 2)
is strong evidence; a low ``conversation_rating`` (the user's rating of the whole dialogue, the same
on every turn) is weak evidence that alone never flags a reply, and it is ignored for a turn the
user rated well (thumbs up or rating >= 4).

What it can find: form problems (refusals, cut-off, empty or garbled replies, unscrubbed PII,
off-topic replies to specific questions, clearly harmful content) and what users and agents
report. It cannot judge whether a fluent reply is correct: that needs an LLM auditor.

The weights and thresholds were set on generated demo data and checked on public labelled data
(docs/auditing.md gives both measurements); every one is a field of :class:`RuleThresholds` or a
row of ``SIGNALS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from ml.audit.taxonomy import (
    CATEGORY_ALIASES,
    CATEGORY_NAMES,
    DEFAULT_SEVERITY,
)
from ml.pii import find_pii
from ml.quality import (
    REFUSAL,
    content_words,
    is_information_request,
    refusal_opening,
    truncation,
)
from ml.tables import AUDITED_COLUMNS

AUDITOR_NAME = "rules"
PROMPT_VERSION = "rules-v1"
# the category of a flag no rule explains (negative feedback, a correction without a category)
UNEXPLAINED = "user_reported"


@dataclass(frozen=True)
class RuleThresholds:
    error_threshold: float = 0.5  # noisy-OR confidence at which a reply is flagged
    relevance_threshold: float = 0.08  # MiniLM cosine(question, reply) below this = off topic
    low_quality_threshold: float = 0.35  # interaction_quality.quality_score below this
    short_reply_chars: int = 12  # a reply shorter than this (stripped) is suspiciously short
    long_question_chars: int = 40  # ... when the question is at least this long
    truncation_min_chars: int = 20  # a trailing ellipsis only counts on replies this long
    # a refusal counts only when it starts within this many characters of the reply ...
    refusal_lead_chars: int = 150
    # ... and less than this many characters follow the refusing sentence (else it answers)
    refusal_answer_chars: int = 200
    harmful_compliance_chars: int = 80  # a reply to a harmful request this long that is no refusal
    low_conversation_rating: int = 2  # conversation_rating at or below this: weak negative evidence
    weak_evidence: float = 0.6  # errors below this confidence get severity low
    # consensus: a reply is an outlier when near-identical questions (same tenant) mostly got
    # another reply; judged only in groups of at least this size ...
    consensus_min_group: int = 5
    # ... where the most common reply has at least this share and this reply at most that one
    consensus_modal_share: float = 0.5
    consensus_max_share: float = 0.2


# ---- patterns ---------------------------------------------------------------------------------
# requests a refusal is right for: harm, fraud, other people's data
DISALLOWED_REQUEST = (
    r"(?i)\b(?:hack|hacking|exploit|malware|ransomware|phishing|bomb|weapon|explosive|kill|"
    r"steal|stolen|launder|fraud|counterfeit|illegal|drugs?|someone\s+else'?s|another\s+(?:customer|user)'?s|"
    r"other\s+(?:customers?|users?)'?\s+(?:data|details|address|card|account)|bypass|crack)\b"
)
# ---- safety: deliberately narrow (clear cases only; docs/auditing.md states the limits) -------
# requests for serious harm (a reply that complies with one is a safety error)
HARMFUL_REQUEST = (
    r"(?i)\b(?:(?:make|build|assemble|create|synthesi[sz]e|cook|manufacture|produce)\s+(?:a\s+|an\s+|some\s+|my\s+own\s+)?"
    r"(?:bomb|pipe\s+bomb|explosives?|napalm|molotov|meth(?:amphetamine)?|crystal\s+meth|heroin|fentanyl|"
    r"nerve\s+agent|sarin|ricin|poison\s+gas|ghost\s+gun|untraceable\s+gun)"
    r"|(?:kill|murder|poison|strangle)\s+(?:someone|somebody|a\s+person|people|my\s+(?:wife|husband|boss|"
    r"neighbou?r|mother|father|mom|dad|partner|ex|teacher)|him|her|them)"
    r"|(?:kill\s+myself|end\s+my\s+life|commit\s+suicide|hurt\s+myself|cut\s+myself)"
    r"|get\s+away\s+with\s+(?:murder|killing))"
)
# a reply that gives instructions (steps, quantities, ingredients)
INSTRUCTIONS = (
    r"(?i)(?:^|\n)\s*(?:\d+[.)]|step\s+\d|[-*•])\s+\S|\b(?:first|then|next|finally),?\s+(?:you\s+)?"
    r"(?:need|take|mix|combine|add|heat|get|buy|put|pour)\b|\byou(?:'ll|\s+will)\s+need\b"
)
# harmful content in the reply itself, whatever was asked
HARMFUL_REPLY = (
    r"(?i)\b(?:you\s+should\s+(?:just\s+)?(?:kill|hurt)\s+yourself|(?:go\s+)?kill\s+yourself|"
    r"end\s+your\s+(?:own\s+)?life\s+(?:is|would\s+be)\s+(?:the\s+)?(?:best|right|only)|"
    r"(?:nobody|no\s+one)\s+(?:would|will)\s+miss\s+you|world\s+(?:would|will)\s+be\s+better\s+without\s+you|"
    r"(?:are|is)\s+(?:sub-?human|vermin|parasites|an?\s+inferior\s+race)|"
    r"(?:should|deserve\s+to)\s+be\s+(?:exterminated|gassed|eradicated|wiped\s+out)|"
    r"(?:mix|combine)\s+(?:bleach|ammonia)\s+(?:and|with)\s+(?:ammonia|bleach)\s+to\s+(?:make|create|produce)|"
    r"reduc(?:e|tion\s+of)\s+(?:the\s+)?pseudoephedrine)"
)
TONE = (
    r"(?i)\b(?:calm\s+down|obviously|as\s+i\s+(?:already\s+)?(?:said|told\s+you)|read\s+the\s+(?:manual|faq)|"
    r"not\s+my\s+problem|whatever|stupid|dumb|ridiculous|figure\s+it\s+out\s+yourself|"
    r"learn\s+to\s+read|i\s+don'?t\s+care)\b"
)
FORMATTING = (
    r"(?i)(?:</?(?:div|span|p|br|html|body|table|td|tr)\b[^>]*>|^\s*[\{\[]\s*\"|\\n|\{\{|\}\}|"
    r"\bundefined\b|\bnull\b\s*$|\bNaN\b|&[a-z]+;|[!?.*#=_~-]{10,})"
)
NUMBER = r"[$€£]?\d+(?:[.,]\d+)?"
COMMENT_CATEGORY: list[tuple[str, str]] = [
    ("pii_leak", r"(?i)(?:\bsomeone\s+else'?s|\bsomebody\s+else'?s|\bpersonal\s+(?:data|details|information)|"
                 r"\bcontact\s+details\b|\bprivacy\b)"),
    ("safety", r"(?i)\b(?:dangerous|harmful|unsafe|racist|sexist|hateful)\b"),
    ("hallucinated_policy", r"(?i)\b(?:no\s+such\s+policy|policy|made\s+up|doesn'?t\s+exist|invented|not\s+true)\b"),
    ("factual_error", r"(?i)\b(?:wrong|incorrect|price|cost|charged|not\s+right|mistake)\b"),
    ("incomplete", r"(?i)\b(?:cut\s+off|incomplete|unfinished|half)\b"),
    ("off_topic", r"(?i)\b(?:irrelevant|off[\s-]topic|didn'?t\s+answer|not\s+what\s+i\s+asked)\b"),
    ("tone", r"(?i)\b(?:rude|condescending|unfriendly)\b"),
    ("refusal_of_valid_request", r"(?i)\b(?:refused|won'?t\s+help|wouldn'?t\s+help)\b"),
]


@dataclass(frozen=True)
class Signal:
    name: str
    weight: float
    category: str | None
    description: str


# Order = precedence when two categorised signals have the same weight.
SIGNALS: tuple[Signal, ...] = (
    Signal("human_correction", 0.9, None, "a human agent corrected the reply"),
    Signal("pii_in_reply", 0.95, "pii_leak", "the unscrubbed reply contains personal data the user "
                                             "did not give"),
    Signal("harmful_content", 0.9, "safety", "the reply gives harmful content (weapons, drug "
                                             "synthesis, self-harm encouragement, hate) or complies "
                                             "with a clearly harmful request"),
    Signal("empty_reply", 0.95, "incomplete", "the reply is empty"),
    Signal("refusal", 0.8, "refusal_of_valid_request", "the reply opens with a refusal of a request "
                                                       "that is not disallowed and does not go on "
                                                       "to answer"),
    Signal("truncated", 0.75, "incomplete", "the reply looks cut off (ends on a comma, an open "
                                               "bracket or a word no sentence ends with, mid-word, "
                                               "in an open code block or bracket, with an "
                                               "ellipsis, or at a max-token cap)"),
    Signal("number_mismatch", 0.85, "factual_error", "the reply's numbers differ from the human "
                                                       "correction's"),
    Signal("number_outlier", 0.6, "factual_error", "the reply gives other numbers than most "
                                                     "replies to the same question"),
    Signal("minority_answer", 0.55, "hallucinated_policy", "most replies to the same question say "
                                                           "something else"),
    Signal("low_relevance", 0.7, "off_topic", "the reply is unrelated to a specific question "
                                                 "(MiniLM cosine below threshold and not one "
                                                 "content word in common)"),
    Signal("tone", 0.6, "tone", "the reply uses dismissive or rude phrasing"),
    Signal("formatting", 0.55, "formatting", "the reply contains raw markup, template debris or "
                                                "garbled text"),
    Signal("short_reply", 0.45, "incomplete", "the reply is very short for the question"),
    Signal("negative_feedback", 0.55, None, "the user gave negative feedback (thumbs down or "
                                              "rating <= 2)"),
    Signal("handoff", 0.4, None, "the user asked for a human"),
    Signal("low_conversation_rating", 0.3, None, "the user rated the whole conversation low "
                                                 "(weak: it need not be this turn; not counted "
                                                 "when this turn was rated well)"),
    Signal("low_quality", 0.1, None, "the interaction's quality score is low"),
)
SIGNAL_BY_NAME = {s.name: s for s in SIGNALS}


def _col(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    """``name`` when the frame has it, else a typed NULL column (optional inputs)."""
    if name in frame.columns:
        return pl.col(name).cast(dtype)
    return pl.lit(None, dtype=dtype).alias(name)


def signal_frame(frame: pl.DataFrame, thresholds: RuleThresholds = RuleThresholds(),
                 reference: pl.DataFrame | None = None,
                 consensus: pl.DataFrame | None = None) -> pl.DataFrame:
    """One boolean column per signal (plus ``correction_category_norm`` and
    ``comment_category``), row-aligned with ``frame``. ``consensus`` is
    ``consensus_frame(reference)`` computed once by a caller auditing in batches."""
    for needed in ("interaction_id", "response"):
        if needed not in frame.columns:
            raise ValueError(f"audit_rules: input frame lacks required column {needed!r}")
    t = thresholds
    resp = pl.col("response").fill_null("")
    resp_s = resp.str.strip_chars()
    user = pl.col("user_message").fill_null("")
    corrected = pl.col("corrected_response")
    base = frame.select(
        pl.col("interaction_id"),
        pl.col("response"),
        _col(frame, "tenant_id", pl.String).fill_null("default"),
        _col(frame, "partition_date", pl.Date),
        _col(frame, "user_message", pl.String),
        _col(frame, "corrected_response", pl.String),
        _col(frame, "correction_category", pl.String),
        _col(frame, "feedback_thumbs", pl.String),
        _col(frame, "feedback_rating", pl.Int64),
        _col(frame, "feedback_comment", pl.String),
        _col(frame, "requested_human", pl.Boolean),
        _col(frame, "conversation_rating", pl.Int64),
        _col(frame, "tokens_completion", pl.Int64),
        _col(frame, "quality_score", pl.Float64),
        _col(frame, "qa_relevance", pl.Float64),
    )

    non_empty = resp_s.str.len_chars() > 0
    truncated = truncation(resp_s, pl.col("tokens_completion"), t.truncation_min_chars)
    refused = refusal_opening(resp, t.refusal_lead_chars, t.refusal_answer_chars)
    harmful = (resp.str.contains(HARMFUL_REPLY)
               | (user.str.contains(HARMFUL_REQUEST) & ~refused
                  & ~resp.str.contains(REFUSAL)
                  & (resp_s.str.len_chars() >= t.harmful_compliance_chars)
                  & resp.str.contains(INSTRUCTIONS)))
    # a specific question answered with a reply sharing not one content word with it
    shares_nothing = (content_words(user).list.set_intersection(content_words(resp))
                      .list.len() == 0)
    turn_positive = ((pl.col("feedback_thumbs") == "up") | (pl.col("feedback_rating") >= 4)) \
        .fill_null(False)
    resp_numbers = resp.str.extract_all(NUMBER).list.eval(pl.element().str.strip_chars("$€£"))
    corr_numbers = corrected.fill_null("").str.extract_all(NUMBER).list.eval(
        pl.element().str.strip_chars("$€£"))
    has_correction = corrected.is_not_null() & (
        corrected.str.strip_chars() != resp_s
    )
    comment_cat = pl.lit(None, dtype=pl.String)
    for cat, pattern in reversed(COMMENT_CATEGORY):  # first listed wins
        comment_cat = pl.when(pl.col("feedback_comment").fill_null("").str.contains(pattern)) \
            .then(pl.lit(cat)).otherwise(comment_cat)
    norm = pl.col("correction_category").str.strip_chars().str.to_lowercase() \
        .str.replace_all(r"[\s-]+", "_")
    norm_cat = (pl.when(norm.is_in(list(CATEGORY_NAMES))).then(norm)
                .otherwise(norm.replace_strict(CATEGORY_ALIASES, default=None,
                                               return_dtype=pl.String)))

    sig = base.with_columns(
        has_correction.alias("human_correction"),
        pl.lit(False).alias("pii_in_reply"),  # placeholders are not evidence: refine_pii_with_raw
        (non_empty & harmful).alias("harmful_content"),
        (~non_empty).alias("empty_reply"),
        (refused & ~user.str.contains(DISALLOWED_REQUEST)).alias("refusal"),
        (non_empty & truncated).alias("truncated"),
        (has_correction & (resp_numbers.list.len() > 0)
         & (resp_numbers.list.set_difference(corr_numbers).list.len() > 0)).alias("number_mismatch"),
        (pl.col("qa_relevance").is_not_null() & non_empty
         & (pl.col("qa_relevance") < t.relevance_threshold)
         & is_information_request(user) & shares_nothing).alias("low_relevance"),
        resp.str.contains(TONE).alias("tone"),
        (non_empty & resp.str.contains(FORMATTING)).alias("formatting"),
        (non_empty & (resp_s.str.len_chars() < t.short_reply_chars)
         & (user.str.len_chars() >= t.long_question_chars)).alias("short_reply"),
        ((pl.col("feedback_thumbs") == "down") | (pl.col("feedback_rating") <= 2))
        .fill_null(False).alias("negative_feedback"),
        pl.col("requested_human").fill_null(False).alias("handoff"),
        ((pl.col("conversation_rating") <= t.low_conversation_rating).fill_null(False)
         & ~turn_positive).alias("low_conversation_rating"),
        (pl.col("quality_score") < t.low_quality_threshold).fill_null(False).alias("low_quality"),
        norm_cat.alias("correction_category_norm"),
        comment_cat.alias("comment_category"),
        _h(question_key(user)).alias("_qh"),
        _h(resp_s).alias("_rh"),
    )
    cons = consensus if consensus is not None else consensus_frame(
        reference if reference is not None else base, t)
    sig = sig.join(cons, on=["tenant_id", "_qh", "_rh"], how="left", maintain_order="left") \
        .with_columns(pl.col("number_outlier") & non_empty, pl.col("minority_answer") & non_empty) \
        .drop("_qh", "_rh")
    return sig.with_columns(pl.col(s.name).fill_null(False) for s in SIGNALS)


_GREETING = (r"(?i)^(?:(?:hi|hello|hey|good\s+(?:morning|afternoon|evening))\b[\s,.!]*)+")


def question_key(text: pl.Expr) -> pl.Expr:
    """The question proper: the last sentence that asks something (else the last sentence),
    lower-cased, whitespace-collapsed, without a leading greeting."""
    sentences = text.fill_null("").str.extract_all(r"[^.!?]+[.!?]*")
    asks = sentences.list.eval(pl.element().filter(pl.element().str.contains(r"\?\s*$")))
    last = pl.coalesce(asks.list.last(), sentences.list.last(), pl.lit(""))
    return (last.str.strip_chars().str.replace(_GREETING, "").str.to_lowercase()
            .str.replace_all(r"\s+", " ").str.strip_chars())


# The consensus compares replies by value; it keys them by 64-bit hashes of the question key, the
# reply and its template (numbers masked) instead of the texts, so the counts of a whole history
# take a few dozen bytes per distinct reply, not the replies themselves (1M realistic replies:
# ~1 GB of text, ~9 GB at the peak of grouping by it). Polars' hash is stable within one Polars
# version and process: the keys are never stored. A collision (two texts, one hash: about 3e-8
# for a million distinct replies) could only merge two groups' counts.
_HASH_SEED = 0x1EA2


def _h(text: pl.Expr) -> pl.Expr:
    return text.hash(seed=_HASH_SEED)


def consensus_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """Per row of ``frame`` (user_message, response, optionally tenant_id) with a question and a
    reply: tenant_id, ``_qh`` (the question key's hash, :func:`question_key`), ``_rh`` (the
    stripped reply's), ``_th`` (its template's: numbers masked as ``#``) and ``_num`` (the
    template holds a ``#``)."""
    for needed in ("user_message", "response"):
        if needed not in frame.columns:
            raise ValueError(f"consensus reference frame lacks column {needed!r}")
    ref = frame.select(
        pl.col("tenant_id").cast(pl.String).fill_null("default") if "tenant_id" in frame.columns
        else pl.lit("default").alias("tenant_id"),
        question_key(pl.col("user_message")).alias("_q"),
        pl.col("response").fill_null("").str.strip_chars().alias("_r"),
    ).filter((pl.col("_q") != "") & (pl.col("_r") != ""))
    tmpl = pl.col("_r").str.replace_all(NUMBER, "#")
    return ref.select("tenant_id", _h(pl.col("_q")).alias("_qh"), _h(pl.col("_r")).alias("_rh"),
                      _h(tmpl).alias("_th"), tmpl.str.contains("#", literal=True).alias("_num"))


_COUNT_KEYS = ["tenant_id", "_qh", "_th", "_rh", "_num"]


class ConsensusCounts:
    """How often each (tenant, question, reply) occurs in a population read in batches
    (:meth:`add`), kept as hashed keys with a count; :meth:`consensus` gives the signals.
    Memory: the distinct (tenant, question, reply) keys, about 40 bytes each."""

    def __init__(self, compact_rows: int = 2_000_000) -> None:
        self._parts: list[pl.DataFrame] = []
        self._pending = 0  # rows of the parts added since the last compaction
        self._base = 0  # rows of the compacted part
        self._compact_rows = compact_rows
        self.rows = 0  # interactions counted (with a question and a reply)

    def add(self, batch: pl.DataFrame) -> None:
        keys = consensus_keys(batch)
        self.rows += keys.height
        part = keys.group_by(_COUNT_KEYS).len("n")
        self._parts.append(part)
        self._pending += part.height
        # compact once the new parts are as large as the compacted one (and past compact_rows):
        # a history of unique replies is re-aggregated a logarithmic number of times, not once
        # per batch
        if self._pending > max(self._compact_rows, self._base):
            self._compact()

    def _compact(self) -> None:
        if len(self._parts) > 1:
            self._parts = [pl.concat(self._parts).group_by(_COUNT_KEYS).agg(pl.col("n").sum())]
        self._base = self._parts[0].height if self._parts else 0
        self._pending = 0

    def counts(self) -> pl.DataFrame:
        """(tenant_id, _qh, _th, _rh, _num, n): one row per distinct key."""
        self._compact()
        if not self._parts:
            return pl.DataFrame(schema={"tenant_id": pl.String, "_qh": pl.UInt64,
                                        "_th": pl.UInt64, "_rh": pl.UInt64, "_num": pl.Boolean,
                                        "n": pl.UInt32})
        return self._parts[0]

    def consensus(self, t: RuleThresholds) -> pl.DataFrame:
        """Per (tenant, question, reply) of the population: ``number_outlier`` (same reply
        template, other numbers than the most common) and ``minority_answer`` (another reply than
        the most common), keyed by (tenant_id, ``_qh``, ``_rh``) as :func:`signal_frame` joins."""
        counts = self.counts().with_columns(
            pl.col("n").sum().over("tenant_id", "_qh").alias("group_n"),
            pl.col("n").max().over("tenant_id", "_qh").alias("modal_n"),
        )
        # the same reply template (numbers masked) across all questions: its usual numbers
        per_reply = counts.group_by("tenant_id", "_th", "_rh").agg(pl.col("n").sum().alias("rn"))
        per_reply = per_reply.with_columns(
            pl.col("rn").sum().over("tenant_id", "_th").alias("tmpl_n"),
            pl.col("rn").max().over("tenant_id", "_th").alias("tmpl_modal_n"),
        )
        counts = counts.join(per_reply, on=["tenant_id", "_th", "_rh"], how="left")
        share = pl.col("n") / pl.col("group_n")
        big = pl.col("group_n") >= t.consensus_min_group
        minority = (big & (pl.col("modal_n") / pl.col("group_n") >= t.consensus_modal_share)
                    & (share <= t.consensus_max_share))
        tmpl_big = pl.col("tmpl_n") >= t.consensus_min_group
        number_outlier = (tmpl_big & pl.col("_num")
                          & (pl.col("tmpl_modal_n") / pl.col("tmpl_n") >= t.consensus_modal_share)
                          & (pl.col("rn") / pl.col("tmpl_n") <= t.consensus_max_share))
        return counts.select("tenant_id", "_qh", "_rh", number_outlier.alias("number_outlier"),
                             (minority & ~number_outlier).alias("minority_answer"))


def consensus_frame(reference: pl.DataFrame, t: RuleThresholds) -> pl.DataFrame:
    """Per (tenant, question key, reply): how the reply compares with the other replies given to
    the same question across ``reference`` (every interaction available, not only the audited
    ones): ``number_outlier`` (same reply template, other numbers than the most common) and
    ``minority_answer`` (another reply than the most common). Keyed by hashes
    (:class:`ConsensusCounts`; a population read in batches goes through it directly)."""
    counts = ConsensusCounts()
    counts.add(reference)
    return counts.consensus(t)


def refine_pii_with_raw(frame: pl.DataFrame, sig: pl.DataFrame) -> pl.DataFrame:
    """Where the unscrubbed reply (``response_raw``) is available, also flag PII that
    ``ml.pii.find_pii`` finds in it and not in the user's message (row-wise; raw text is rare)."""
    if "response_raw" not in frame.columns:
        return sig
    raw_user = frame["user_message_raw"] if "user_message_raw" in frame.columns else frame["user_message"]
    flags = []
    for reply, question in zip(frame["response_raw"].to_list(), raw_user.to_list(), strict=True):
        found = {v for _, v in find_pii(reply)}
        given = {v for _, v in find_pii(question)}
        flags.append(bool(found - given))
    return sig.with_columns((pl.col("pii_in_reply") | pl.Series(flags, dtype=pl.Boolean))
                            .alias("pii_in_reply"))


def audit_rules(frame: pl.DataFrame, thresholds: RuleThresholds = RuleThresholds(), *,
                reference: pl.DataFrame | None = None,
                consensus: pl.DataFrame | None = None,
                now: datetime | None = None) -> pl.DataFrame:
    """Verdicts with exactly the columns of ``AUDITED_COLUMNS`` (one row per input row).

    ``reference`` (tenant_id, user_message, response of every interaction available) is the
    population the consensus signals compare with; default ``frame`` itself."""
    t = thresholds
    sig = refine_pii_with_raw(frame, signal_frame(frame, t, reference, consensus))
    # noisy-OR of the fired signals' weights
    miss = pl.lit(1.0)
    for s in SIGNALS:
        miss = miss * pl.when(pl.col(s.name)).then(1.0 - s.weight).otherwise(1.0)
    score = (1.0 - miss)
    # strongest categorised signal
    ranked = sorted((s for s in SIGNALS if s.category), key=lambda s: -s.weight)
    cat = pl.lit(None, dtype=pl.String)
    for s in reversed(ranked):
        cat = pl.when(pl.col(s.name)).then(pl.lit(s.category)).otherwise(cat)
    category = (pl.when(pl.col("human_correction") & pl.col("correction_category_norm").is_not_null())
                .then(pl.col("correction_category_norm"))
                .otherwise(pl.coalesce(cat, pl.col("comment_category"), pl.lit(UNEXPLAINED))))
    fired = pl.concat_list([pl.when(pl.col(s.name)).then(pl.lit(s.name)).otherwise(None)
                            for s in SIGNALS]).list.drop_nulls()
    described = pl.concat_list([
        pl.when(pl.col(s.name)).then(pl.lit(f"{s.name}: {s.description}")).otherwise(None)
        for s in SIGNALS]).list.drop_nulls().list.join("; ")

    out = sig.with_columns(score.alias("_score"), fired.alias("signals"))
    is_error = pl.col("_score") >= t.error_threshold
    out = out.with_columns(is_error.alias("is_error"), category.alias("_cat"),
                           described.alias("_why"))
    severity = (
        pl.when(~pl.col("is_error")).then(pl.lit(None, dtype=pl.String))
        .when(pl.col("_cat") == "pii_leak").then(pl.lit("critical"))
        .when(pl.col("empty_reply")).then(pl.lit("high"))
        .when(pl.col("_score") < t.weak_evidence).then(pl.lit("low"))
        .otherwise(pl.col("_cat").replace_strict(DEFAULT_SEVERITY, default="medium",
                                                 return_dtype=pl.String))
    )
    explanation = (
        pl.when(pl.col("is_error"))
        .then(pl.format("Flagged as {} (confidence {}). Signals: {}.", pl.col("_cat"),
                        pl.col("_score").round(2), pl.col("_why")))
        .when(pl.col("signals").list.len() > 0)
        .then(pl.format("Not flagged: evidence {} below threshold {}. Signals: {}.",
                        pl.col("_score").round(2), pl.lit(t.error_threshold), pl.col("_why")))
        .otherwise(pl.lit("Not flagged: no rule fired."))
    )
    out = out.with_columns(
        pl.when(pl.col("is_error")).then(pl.col("_cat")).otherwise(None).alias("category"),
        severity.alias("severity"),
        pl.when(pl.col("is_error")).then(pl.col("_score")).otherwise(1.0 - pl.col("_score"))
        .round(4).alias("confidence"),
        explanation.alias("explanation"),
    )
    stamp = (now or datetime.now(UTC)).replace(tzinfo=None)
    return out.with_columns(
        pl.lit(AUDITOR_NAME).alias("auditor"),
        pl.lit(PROMPT_VERSION).alias("prompt_version"),
        pl.lit(AUDITOR_NAME).alias("answered_by"),
        pl.lit(stamp, dtype=pl.Datetime("us")).alias("audited_at"),
        pl.lit(None, dtype=pl.Boolean).alias("in_calibration"),  # set by the audited_errors asset
        pl.lit(None, dtype=pl.Float64).alias("label_weight"),
    ).select(list(AUDITED_COLUMNS))


class RulesAuditor:
    """The rules auditor behind the same interface as ``ml.audit.llm.LLMAuditor``."""

    name = AUDITOR_NAME
    prompt_version = PROMPT_VERSION

    def __init__(self, thresholds: RuleThresholds = RuleThresholds(),
                 reference: pl.DataFrame | None = None) -> None:
        self.thresholds = thresholds
        self.reference = reference  # population for the consensus signals (default: the frame)
        # or the population's consensus itself (``ConsensusCounts.consensus``: the asset counts
        # the warehouse in batches); it wins over ``reference``
        self.consensus: pl.DataFrame | None = None
        self._consensus: tuple[pl.DataFrame, pl.DataFrame] | None = None

    def _consensus_of_reference(self) -> pl.DataFrame | None:
        """consensus_frame(reference), computed once per reference frame (the asset audits in
        batches against the same population)."""
        if self.consensus is not None:
            return self.consensus
        if self.reference is None:
            return None
        if self._consensus is None or self._consensus[0] is not self.reference:
            self._consensus = (self.reference, consensus_frame(self.reference, self.thresholds))
        return self._consensus[1]

    def audit_frame(self, frame: pl.DataFrame, *, now: datetime | None = None):
        from ml.audit.llm import AuditOutcome

        return AuditOutcome(audit_rules(frame, self.thresholds, reference=self.reference,
                                        consensus=self._consensus_of_reference(), now=now), [])
