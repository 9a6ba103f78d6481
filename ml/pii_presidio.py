"""Presidio as an independent PII detector: the residual-PII checks and the PII benchmark.

``ml.pii`` is our scrubber (hand-written rules). This module wraps Microsoft Presidio's analyzer
with its *pattern recognizers only* (no NER model: the spaCy pipeline is ``spacy.blank("en")``, so
nothing is downloaded), a differently built detector whose blind spots are not ours: phone numbers
through Google's ``phonenumbers``, e-mails checked against the public-suffix list that ships with
``tldextract`` (never fetched: the extractor is set to the bundled snapshot), Luhn and IBAN
checksums of its own. Presidio has no recognizer for credentials, so two are added here, built
differently from ``ml.pii``'s prefix list: any 24+ character token with upper case, lower case and
digits and a high character entropy, and PEM private-key headers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache

# Presidio entity -> our PII type (``ml.pii.PII_TYPES``)
ENTITIES = {
    "EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "US_SSN": "SSN", "SECRET": "SECRET",
}
# the recognizers the benchmark compares with (Presidio's own, no secrets)
PRESIDIO_ENTITIES = [e for e in ENTITIES if e != "SECRET"]


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


@lru_cache(maxsize=1)
def analyzer():
    """The Presidio ``AnalyzerEngine``: pattern recognizers, blank spaCy pipeline, offline."""
    import spacy
    import tldextract
    import tldextract.tldextract as tld_module
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # the public-suffix list bundled with tldextract; never fetched from the network
    tld_module.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    class BlankSpacy(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {"en": spacy.blank("en")}

    class HighEntropyToken(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            t = pattern_text
            return (sum(c.isdigit() for c in t) >= 2 and sum(c.isupper() for c in t) >= 2
                    and sum(c.islower() for c in t) >= 2 and _entropy(t) >= 4.2)

    engine = BlankSpacy(models=[{"lang_code": "en", "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    registry.add_recognizer(HighEntropyToken(
        supported_entity="SECRET", name="HighEntropyToken",
        patterns=[Pattern("token", r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_=-]{24,}", 0.6)]))
    registry.add_recognizer(PatternRecognizer(
        supported_entity="SECRET", name="PrivateKeyHeader",
        patterns=[Pattern("pem", r"-----BEGIN [A-Z ]*PRIVATE KEY-----", 0.9)]))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def presidio_spans(text: str, entities: list[str] | None = None,
                   threshold: float = 0.0) -> list[tuple[int, int, str]]:
    """(start, end, our PII type) of what Presidio finds in ``text``."""
    if not text:
        return []
    results = analyzer().analyze(text, language="en", entities=entities or list(ENTITIES),
                                 score_threshold=threshold)
    return sorted((r.start, r.end, ENTITIES[r.entity_type]) for r in results)


def _inside_identifier(text: str, s: int, e: int) -> bool:
    """Is ``text[s:e]`` part of a longer token (ES-1689455, 09340662-cae9-...)?"""
    before = text[max(0, s - 2):s]
    after = text[e:e + 2]
    return (bool(before) and (before[-1].isalnum() or (before[-1] in "-_/" and len(before) > 1
                                                       and before[0].isalnum()))) or \
        (bool(after) and (after[0].isalnum() or (after[0] in "-_" and len(after) > 1
                                                 and after[1].isalnum())))


# a range of years, "(1995-2019)", "(2048-2104)": phonenumbers reads it as a phone number; in
# parentheses either order, else the second year must come after the first, by less than 300
_YEAR = r"(?:1[5-9]|2[01])\d\d"
_YEAR_RANGE = re.compile(rf"\(?({_YEAR})\)?\s*[-\u2013]\s*\(?({_YEAR})(?!\d)")
# groups of 4 digits that are all years, "1985 1923 1950 1948": a list of years, not a card
# number even when the 16 digits pass Luhn (Presidio's card pattern takes 1xxx, no issuer's)
_YEAR_LIST = re.compile(rf"{_YEAR}(?:[\s,;/-]+{_YEAR})+")


# a range of two ratios, "120/80-140/90" (blood pressure): phonenumbers reads it as a phone number
_RATIO_RANGE = re.compile(r"\d{2,3}/\d{2,3}\s*[-\u2013]\s*\d{2,3}/\d{2,3}")


# digits on both sides of a sentence's end, "in 1998. 1796 - 31 May": no phone number format puts
# a full stop and a space between its groups (a dotted number has no space: 555.123.4567)
_SENTENCE_BREAK = re.compile(r"\d[.!?]\s+\(?\d")


def _year_range_at(text: str, s: int) -> bool:
    m = _YEAR_RANGE.match(text, s)
    if not m:
        return False
    enclosed = (text[s - 1:s] == "(" or m.group(0).startswith("(")) and (
        m.group(0).endswith(")") or text[m.end():m.end() + 1] == ")")
    return enclosed or 0 < int(m.group(2)) - int(m.group(1)) < 300


def _years_only(match: str) -> bool:
    return bool(_YEAR_LIST.fullmatch(match.strip()))
# below this score a Presidio pattern is a bare shape with no evidence (a 9-digit number as an
# SSN, a bank account or a passport: 0.05): real text is full of such numbers
MIN_SCORE = 0.1


def presidio_findings(text: str) -> list[tuple[str, str]]:
    """(PII type, matched text) per Presidio finding in ``text`` (placeholders such as
    ``[EMAIL]`` hold nothing it matches). Left out, so the blocking check does not stop on what
    real chat is full of: ``phonenumbers`` is lenient, so phone hits with fewer than 8 digits,
    inside a longer identifier (order ``ES-1689455``, a UUID's first group) or that are a range of
    years ("(1995-2019) 11") or of ratios ("120/80-140/90"), across a sentence's end ("in
    1998. 1796 - 31 May") or inside a URL
    (``qid=1420904010``) are dropped, and so are card hits that are a list of years ("1985 1923
    1950 1948" passes Luhn) or part of a longer identifier (a UUID's first three groups,
    "55525315-4879-9944-5262-...", as the scrubber reads it too); findings scored
    below ``MIN_SCORE`` (a bare 9-digit number as an SSN); credential-looking tokens that are
    part of a URL (a path such as
    ``/dp/B46B58OYIWE/ref=sr_55_19``: a path is not a credential; a token in a query string,
    ``?key=...``, still counts)."""
    if not text:
        return []
    results = analyzer().analyze(text, language="en", entities=[*ENTITIES, "URL"],
                                 score_threshold=0.0)
    urls = [(r.start, r.end) for r in results if r.entity_type == "URL"]
    out = []
    for r in sorted(results, key=lambda r: (r.start, r.end, r.entity_type)):
        if r.entity_type == "URL" or r.score < MIN_SCORE:
            continue
        s, e, t = r.start, r.end, ENTITIES[r.entity_type]
        if t == "PHONE" and (sum(c.isdigit() for c in text[s:e]) < 8
                             or _inside_identifier(text, s, e)
                             or _year_range_at(text, s)
                             or _RATIO_RANGE.fullmatch(text[s:e].strip())
                             or _SENTENCE_BREAK.search(text[s:e])
                             or any(us <= s and e <= ue for us, ue in urls)):
            continue
        if t == "CREDIT_CARD" and (_years_only(text[s:e]) or _inside_identifier(text, s, e)):
            continue
        if t == "SECRET" and "/" in text[s:e] and any(us <= s and e <= ue + 1 for us, ue in urls):
            continue
        out.append((t, text[s:e]))
    return out
