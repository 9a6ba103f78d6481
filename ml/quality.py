"""Multi-dimensional interaction quality (seed 003, "Quality Assessment Framework"), vectorized.

``score_interactions(interactions) -> frame with exactly QUALITY_COLUMNS``. Every dimension is a
number in [0, 1] or NULL when the record carries no evidence for it; the overall ``quality_score``
is the weighted mean over the dimensions present, the seed's weights renormalized per row.

Dimensions (weights: ``quality_weights()``):

* ``user_satisfaction`` (0.30): the seed's explicit/implicit/temporal mix 0.5/0.3/0.2, renormalized
  over the sub-signals present.
  - explicit: ``rating / 5``; else thumbs up 1 / down 0.
  - implicit (first rule that applies): accepted -> 1.0; modified -> 0.7 (the seed's partial
    credit); abandoned or requested_human (the user asked for a person) -> 0.0;
    completed_action -> 1.0; user_continued -> 0.6 (the user carried on: mildly positive);
    accepted = false or completed_action = false -> 0.3; otherwise absent.
  - temporal: time_to_first_use_s < 30 -> 1.0, < 300 -> 0.5, else 0.0.
* ``functional_correctness`` (0.25): the seed measures code compilation and tests; a support chat
  has outcome signals and reply heuristics instead (first rule that applies): a human correction
  -> 0.1; completed_action true -> 1.0 / false -> 0.3; empty reply -> 0.0; a reply that opens
  with a refusal and does not go on to answer (``refusal_opening``: "I can't help", "I'm unable
  to", "as an AI ... I cannot") -> 0.2; a reply that looks cut off (``truncation``: a dangling
  comma or function word, mid-word, an ellipsis, an open code fence or bracket; not merely a
  missing full stop) -> 0.5; otherwise absent.
* ``code_quality`` (0.20): not measurable for support chat; never present.
* ``context_relevance`` (0.15): word overlap of the user's content words (3+ letters, not stop
  words, placeholders removed) with the reply, a weak signal: open-domain chat answers well with
  other words than the question's ("a name for my kitten?" -> "Luna or Milo"). So: shared words
  give ``min(1, 0.5 + |Q & R| / |Q|)``; no shared word gives 0.0 only for a specific information
  request (``is_information_request``: a message of 2+ content words that is not open-ended,
  i.e. not creative writing, ideas, opinions, advice or small talk) and is absent otherwise; absent without a user
  message, a reply, or content words. No model is involved.
* ``efficiency`` (0.10): the seed's time score ``clamp(1 - (latency_s - 2) / 10, 0, 1)`` (weight
  0.4) and a conciseness score from completion tokens ``clamp(1 - (tokens - 400) / 1600, 0, 1)``
  (weight 0.3, standing in for the seed's "solution elegance"), renormalized over those present.

``confidence`` follows the seed's ``calculate_confidence``: the mean of a feedback factor (explicit
1.0 / implicit or temporal only 0.7 / none 0.3), a correctness-evidence factor (objective outcome
— completed_action known or a human correction — 1.0, else 0.5) and context completeness (share of
user message, reply, and retrieval-or-intent present). The seed's time-decay factor is left out:
scores are recomputed whenever a partition is re-materialized.
"""

from __future__ import annotations

import polars as pl

from ml.tables import QUALITY_COLUMNS

SCORER_VERSION = "quality-1.0"

SEED_WEIGHTS: dict[str, float] = {
    "user_satisfaction": 0.30,
    "functional_correctness": 0.25,
    "code_quality": 0.20,
    "context_relevance": 0.15,
    "efficiency": 0.10,
}
MEASURED_DIMENSIONS = ("user_satisfaction", "functional_correctness", "context_relevance",
                       "efficiency")
SATISFACTION_WEIGHTS = {"explicit": 0.5, "implicit": 0.3, "temporal": 0.2}
EFFICIENCY_WEIGHTS = {"time": 0.4, "tokens": 0.3}

_STOP = sorted({
    "the", "and", "for", "are", "but", "not", "you", "your", "yours", "all", "any", "can", "had",
    "her", "was", "one", "our", "out", "has", "have", "him", "his", "how", "its", "may", "new",
    "now", "see", "two", "who", "did", "get", "got", "let", "say", "she", "too", "use", "with",
    "this", "that", "from", "they", "will", "would", "there", "their", "what", "about", "which",
    "when", "make", "like", "just", "know", "take", "into", "them", "than", "then", "some",
    "could", "also", "want", "need", "please", "thanks", "thank", "hello", "does", "doesn",
    "don", "why", "where", "here", "been", "were", "being", "should", "very", "much", "more",
})
# ---- reply heuristics (shared with the rules auditor, ml.audit.rules) -----------------------
# A refusal: a first-person "I can't / I'm unable to <help, provide, ...>", or the "as an AI
# (language model)" disclaimer *with* a negation in the same sentence. It counts only when it opens
# the reply (starts within ``lead_chars``) and the reply does not go on to answer (less
# than ``answer_chars`` after the refusing sentence): "As an AI language model, I don't
# have opinions, but here are three options: ..." is an answer.
REFUSAL = (
    r"(?i)(?:\bi\s*(?:am|'m|’m)\s+(?:sorry,?\s+)?(?:but\s+)?(?:unable|not\s+able|not\s+allowed|not\s+permitted)\s+to"
    r"|\bi\s+(?:can(?:not|'t|’t)|won(?:'t|’t)|am\s+not\s+able\s+to)\s+(?:help|assist|provide|share|do|answer|discuss|process|give|tell|look|check)"
    r"|\bunable\s+to\s+(?:help|assist)\b"
    r"|\bas\s+an\s+ai\b[^.!?\n]{0,80}?\b(?:can(?:not|'t|’t)|won(?:'t|’t)|unable|not\s+able|not\s+allowed|not\s+permitted)\b"
    r"|\b(?:outside|beyond)\s+(?:of\s+)?(?:my|the)\s+scope\b"
    r"|\bi\s+(?:can(?:not|'t|’t)|am\s+not\s+able\s+to)\s+(?:help|assist)\s+with\s+that)"
)
# ---- truncation: only a reply that really looks cut ---------------------------------------------
# (a missing final full stop is not evidence: lists, code, URLs, emoji, sign-offs and headings end
# without one)
TRAILING_ELLIPSIS = r"[\p{L}\p{N}](?:\.\.\.|…)\s*$"
TERMINAL = r"[.!?)>\]\"'`*:;»”’》。！？}]\s*$|[\p{Emoji_Presentation}]\s*$|https?://\S+\s*$"
# ends in a comma, an opening bracket, a dash or a word a reply's sentence hardly ends with
# (article, preposition, conjunction, possessive, a bare "is"/"are"; in the public samples of
# docs/auditing.md every reply ending on one of them without punctuation was cut)
DANGLING = (
    r"(?:,|,\s*then|\(|\[|\{|&|\+|–|—|\s-)\s*$"
    r"|(?i:\b(?:a|an|the|and|or|but|nor|of|to|from|by|into|onto|than|per|via|between|because|"
    r"although|whether|your|our|their|my|whose|including|for|with|at|on|in|about|is|are|was|were|"
    r"(?:and|or|but)\s+then|such\s+as|"
    r"as\s+well\s+as|in\s+order\s+to))\s*$"
)
MID_WORD = r"\s[b-hj-z]$"  # a lone lower-case consonant: a word cut after its first letter
EMOTICON = r"[:;]-?[()\[\]]"
# completion-token counts that are usual max_tokens settings: a reply that used exactly one of
# them and does not end a sentence hit the cap
TOKEN_CAPS = (100, 128, 150, 200, 250, 256, 300, 400, 500, 512, 1000, 1024, 1500, 2000, 2048,
              3000, 4000, 4096, 8000, 8192)
_PLACEHOLDER = r"\[[A-Z_]+\]"
_WORD = r"[\p{L}\p{N}]{3,}"
# a request needs this many content words (fewer: small talk, "thanks", "ok")
_REQUEST_MIN_WORDS = 2
# open-ended requests: creative, opinion, advice, brainstorming or small talk, where a good reply
# need not repeat any of the question's words
_OPEN_ENDED = (r"(?i)\b(?:write|compose|poem|story|song|lyrics|joke|ideas?|suggest\w*|recommend\w*|"
               r"opinion|think|feel|imagine|brainstorm|creative|names?\s+for|good\s+name|advice|"
               r"tips?|favou?rite|how\s+are\s+you|chat|talk|pretend|role-?play|good\s+(?:morning|afternoon|evening|night)|how\s+is\s+it\s+going)\b")


def content_words(text: pl.Expr) -> pl.Expr:
    """The distinct content words of ``text`` (lower-cased, 3+ letters, no stop words, scrubber
    placeholders removed), as a list."""
    return (text.fill_null("").str.replace_all(_PLACEHOLDER, " ").str.to_lowercase()
            .str.extract_all(_WORD).list.unique()
            .list.set_difference(pl.lit(pl.Series([_STOP], dtype=pl.List(pl.String)))))


def is_information_request(text: pl.Expr) -> pl.Expr:
    """The message asks for something specific (a question or a request about a thing: "How much
    is the basic plan?", "My order ES-1 hasn't arrived"): at least ``_REQUEST_MIN_WORDS`` content
    words and not open-ended (creative writing, ideas, opinions, advice, small talk:
    ``_OPEN_ENDED``), where a good reply sharing no word with the message is normal ("A good
    name for my kitten?" -> "Luna or Milo")."""
    t = text.fill_null("")
    return (content_words(t).list.len() >= _REQUEST_MIN_WORDS) & ~t.str.contains(_OPEN_ENDED)


_SCHEMA = {"VARCHAR": pl.String, "DATE": pl.Date, "DOUBLE": pl.Float64, "INTEGER": pl.Int32}


def truncation(text: pl.Expr, tokens_completion: pl.Expr, min_chars: int = 20) -> pl.Expr:
    """The reply (stripped) looks cut off: it ends on a comma, an opening bracket, a dash or a
    word no sentence ends with (``DANGLING``); on a lone consonant (mid-word); with an ellipsis
    right after a word (on replies of ``min_chars`` or more); inside an open code fence; with
    more opening than closing brackets and no sentence end; or it used exactly a usual max-token
    count (``TOKEN_CAPS``) and does not end a sentence. A reply merely without a final full stop
    is not flagged."""
    ends_sentence = text.str.contains(TERMINAL)
    no_emoticons = text.str.replace_all(EMOTICON, "")
    unbalanced = pl.lit(False)
    for o, c in (("(", ")"), ("[", "]"), ("{", "}")):
        unbalanced = unbalanced | (no_emoticons.str.count_matches(o, literal=True)
                                   > no_emoticons.str.count_matches(c, literal=True))
    return (text.str.contains(DANGLING)
            | text.str.contains(MID_WORD)
            | ((text.str.len_chars() >= min_chars)
               & text.str.contains(TRAILING_ELLIPSIS))
            | (text.str.count_matches("```", literal=True) % 2 == 1)
            | (unbalanced & ~ends_sentence)
            | (tokens_completion.is_in(list(TOKEN_CAPS)).fill_null(False) & ~ends_sentence))


def refusal_opening(reply: pl.Expr, lead_chars: int = 150, answer_chars: int = 200) -> pl.Expr:
    """The reply opens with a refusal (``REFUSAL`` within ``lead_chars``) and does not go
    on to answer (less than ``answer_chars`` after the refusing sentence)."""
    at = reply.str.find(REFUSAL)
    rest = (reply.str.slice(at.fill_null(0)).str.replace(r"^[^.!?\n]*[.!?\n]*", "")
            .str.strip_chars().str.len_chars())
    return (at.is_not_null() & (at < lead_chars)
            & (rest < answer_chars)).fill_null(False)



def quality_weights() -> dict[str, float]:
    """Dimension weights used for ``quality_score`` before per-row renormalization.

    The seed's weights for the dimensions this scorer measures: user_satisfaction 0.30,
    functional_correctness 0.25, context_relevance 0.15, efficiency 0.10 (code_quality 0.20 is not
    measurable for support chat and therefore never present). For each row the weights of the
    dimensions that are present (non-NULL) are rescaled to sum to 1."""
    return {d: SEED_WEIGHTS[d] for d in MEASURED_DIMENSIONS}


def _weighted_mean(parts: dict[str, float], cols: dict[str, pl.Expr]) -> pl.Expr:
    """Weighted mean of the non-null expressions; NULL when all are NULL."""
    num = pl.sum_horizontal([(cols[k] * w).fill_null(0.0) for k, w in parts.items()])
    den = pl.sum_horizontal([pl.when(cols[k].is_not_null()).then(w).otherwise(0.0)
                             for k, w in parts.items()])
    return pl.when(den > 0).then(num / den).otherwise(None)


def _clamp01(e: pl.Expr) -> pl.Expr:
    return e.clip(0.0, 1.0)


# the columns of ``interactions`` the score reads (a reader needs no others)
SCORING_INPUTS = ("interaction_id", "tenant_id", "partition_date", "model_version",
                  "user_message", "response", "latency_ms", "tokens_completion",
                  "feedback_rating", "feedback_thumbs", "accepted", "modified",
                  "abandoned", "requested_human", "completed_action", "user_continued",
                  "time_to_first_use_s", "corrected_response", "retrieval", "intent")


def score_interactions(df: pl.DataFrame) -> pl.DataFrame:
    """Score an ``interactions`` frame (at least :data:`SCORING_INPUTS`); return exactly
    QUALITY_COLUMNS. Each row's score depends on that row alone, so a partition may be scored
    in batches of rows (what the ``interaction_quality`` asset does) with the same result."""
    missing = [c for c in SCORING_INPUTS if c not in df.columns]
    if missing:
        raise ValueError(f"score_interactions: interactions frame lacks columns {missing}")
    c = pl.col
    explicit = (pl.when(c("feedback_rating").is_not_null()).then(c("feedback_rating") / 5.0)
                .when(c("feedback_thumbs") == "up").then(1.0)
                .when(c("feedback_thumbs") == "down").then(0.0))
    implicit = (pl.when(c("accepted")).then(1.0)
                .when(c("modified")).then(0.7)
                .when(c("abandoned") | c("requested_human")).then(0.0)
                .when(c("completed_action")).then(1.0)
                .when(c("user_continued")).then(0.6)
                .when((c("accepted") == False) | (c("completed_action") == False))  # noqa: E712
                .then(0.3))
    ttfu = c("time_to_first_use_s")
    temporal = (pl.when(ttfu < 30).then(1.0).when(ttfu < 300).then(0.5)
                .when(ttfu.is_not_null()).then(0.0))

    resp = c("response")
    stripped = resp.str.strip_chars()
    reply_features = {  # functions of the reply text alone: computed once per distinct reply
        "_empty": resp.is_not_null() & (stripped == ""),
        "_refusal": refusal_opening(resp),
        "_truncated": truncation(stripped, pl.lit(None, dtype=pl.Int64)),
    }
    correction = c("corrected_response").is_not_null()
    correctness = (pl.when(correction).then(0.1)
                   .when(c("completed_action") == True).then(1.0)  # noqa: E712
                   .when(c("completed_action") == False).then(0.3)  # noqa: E712
                   .when(c("_empty")).then(0.0)
                   .when(c("_refusal")).then(0.2)
                   .when(c("_truncated")).then(0.5))

    def words(col: str) -> pl.Expr:
        return content_words(c(col))

    latency_s = c("latency_ms") / 1000.0
    time_score = _clamp01(1.0 - (latency_s - 2.0) / 10.0)
    token_score = _clamp01(1.0 - (c("tokens_completion").cast(pl.Float64) - 400.0) / 1600.0)

    # chat logs repeat questions and replies: the text features are computed once per distinct
    # text and joined back
    questions = df.select("user_message").unique().with_columns(
        words("user_message").alias("_q"), is_information_request(c("user_message")).alias("_ask"))
    replies = df.select("response").unique().with_columns(
        words("response").alias("_r"), **reply_features)
    df = df.join(questions, on="user_message", how="left", nulls_equal=True,
                 maintain_order="left").join(replies, on="response", how="left",
                                             nulls_equal=True, maintain_order="left")
    qlen = c("_q").list.len()
    shared = c("_q").list.set_intersection(c("_r")).list.len()
    relevance = (pl.when(c("_r").is_null() | (qlen == 0)).then(None)
                 .when(shared > 0).then(_clamp01(0.5 + shared / qlen))
                 .when(c("_ask")).then(0.0))
    frame = df.select(
        "interaction_id", "tenant_id", "partition_date", "model_version",
        explicit.alias("_explicit"), implicit.alias("_implicit"), temporal.alias("_temporal"),
        correctness.alias("functional_correctness"), relevance.alias("context_relevance"),
        time_score.alias("_time"), token_score.alias("_tokens"),
        correction.alias("_correction"), c("completed_action").is_not_null().alias("_outcome"),
        (c("user_message").is_not_null().cast(pl.Float64)
         + resp.is_not_null().cast(pl.Float64)
         + (c("retrieval").is_not_null() | c("intent").is_not_null()).cast(pl.Float64)
         ).alias("_context_n"),
    )
    frame = frame.with_columns(
        _weighted_mean(SATISFACTION_WEIGHTS, {"explicit": c("_explicit"),
                                              "implicit": c("_implicit"),
                                              "temporal": c("_temporal")})
        .alias("user_satisfaction"),
        _weighted_mean(EFFICIENCY_WEIGHTS, {"time": c("_time"), "tokens": c("_tokens")})
        .alias("efficiency"),
    )
    dims = {d: c(d) for d in MEASURED_DIMENSIONS}
    feedback_factor = (pl.when(c("_explicit").is_not_null()).then(1.0)
                       .when(c("_implicit").is_not_null() | c("_temporal").is_not_null()).then(0.7)
                       .otherwise(0.3))
    correctness_factor = pl.when(c("_correction") | c("_outcome")).then(1.0).otherwise(0.5)
    completeness = c("_context_n") / 3.0
    out = frame.with_columns(
        _weighted_mean(quality_weights(), dims).alias("quality_score"),
        ((feedback_factor + correctness_factor + completeness) / 3.0).alias("confidence"),
        pl.sum_horizontal([dims[d].is_not_null().cast(pl.Int32) for d in MEASURED_DIMENSIONS])
        .alias("dimensions_present"),
        pl.lit(SCORER_VERSION).alias("scorer_version"),
    )
    return out.select([pl.col(k).cast(_SCHEMA[v]) for k, v in QUALITY_COLUMNS.items()])
