"""PII scrubbing: true positives per type, false positives, vectorized == single-string."""

from __future__ import annotations

import polars as pl
import pytest

from ml.pii import (
    PII_TYPES,
    find_pii,
    iban_valid,
    luhn_valid,
    scrub_cut_tail,
    scrub_cut_text,
    scrub_frame,
    scrub_text,
)

TRUE_POSITIVES = [
    ("EMAIL", "write to jane.doe+tag@mail.example.co.uk please", "jane.doe+tag@mail.example.co.uk"),
    ("PHONE", "call me on +44 20 7946 0958 tomorrow", "+44 20 7946 0958"),
    ("PHONE", "my number is +1 (555) 123-4567.", "+1 (555) 123-4567"),
    ("PHONE", "US office: (212) 555-0199", "(212) 555-0199"),
    ("PHONE", "ring 555-123-4567 or later", "555-123-4567"),
    ("PHONE", "Festnetz 030 12345678", "030 12345678"),
    ("PHONE", "portable 06 12 34 56 78", "06 12 34 56 78"),
    ("PHONE", "whatsapp +4915112345678 ok", "+4915112345678"),
    ("CREDIT_CARD", "card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
    ("CREDIT_CARD", "mc 5555-5555-5555-4444", "5555-5555-5555-4444"),
    ("CREDIT_CARD", "amex 378282246310005", "378282246310005"),
    ("IBAN", "IBAN DE89 3704 0044 0532 0130 00 thanks", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "pay to GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("IP_ADDRESS", "from 192.168.1.254 at night", "192.168.1.254"),
    ("IP_ADDRESS", "v6 2001:db8:85a3::8a2e:370:7334 seen", "2001:db8:85a3::8a2e:370:7334"),
    ("IP_ADDRESS", "full 2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
    ("SSN", "ssn 123-45-6789", "123-45-6789"),
    ("SECRET", "key sk-proj-abcdefghijklmnop1234567890", "sk-proj-abcdefghijklmnop1234567890"),
    ("SECRET", "aws AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
    ("SECRET", "token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("SECRET", "slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
    ("SECRET", "Authorization: Bearer abcdef0123456789ABCDEF.xyz", "abcdef0123456789ABCDEF.xyz"),
    ("SECRET", "config api_key=Zx81kLq0pp", "Zx81kLq0pp"),
    ("SECRET", "my password: hunter22", "hunter22"),
]

FALSE_POSITIVES = [
    "The total is $1,299.99 including VAT",
    "Price: 49,90 EUR or 1 299,00 SEK",
    "Order #1234567890123 shipped",  # 13 digits, not an issuer prefix / not Luhn
    "order number 88123412 and ref ORD-2024-001234",
    "tracking 1Z999AA10123456784",
    "It left the depot on 2024-03-02 at 10:30:00",
    "Dates: 01.02.2024, 15/01/2024, 2024/01/15",
    "Date 01-02-2024 10:30",
    "card 4111 1111 1111 1112 is what I typed",  # fails Luhn
    "digits 1234 5678 9012 3456",  # fails Luhn
    "IBAN GB82 WEST 1234 5698 7654 33 maybe",  # fails mod-97
    "version 3.2.1 of the app, build 20240301",
    "call between 9-5, room 101, 3 items",
    "the ratio 16:9 and time 12:30:45",
    "C++ std::vector and Foo::bar()",
    "temperature 22.5 C, 100 km",
    "I forgot my password",
    "invoice 2024-000123",
]


@pytest.mark.parametrize("pii_type,text,match", TRUE_POSITIVES)
def test_true_positives(pii_type, text, match):
    out, types = scrub_text(text)
    assert match not in out
    assert f"[{pii_type}]" in out
    assert pii_type in types
    assert any(t == pii_type and match in m for t, m in find_pii(text))
    assert find_pii(out) == []


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positives_left_alone(text):
    out, types = scrub_text(text)
    assert out == text, out
    assert types == []
    assert find_pii(text) == []


def test_checksums():
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00")
    assert not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89 3704 0044 0532 0130")  # wrong length for DE


def test_iban_followed_by_capitals_is_trimmed():
    out, _ = scrub_text("BE68 5390 0754 7034 PLEASE CHECK")
    assert out == "[IBAN] PLEASE CHECK"


def test_card_next_to_other_digits():
    out, _ = scrub_text("card 4111 1111 1111 1111 12 thanks")
    assert out == "card [CREDIT_CARD] 12 thanks"


CUT_CARD_TAILS = [  # (a text cut short, what the cut-tail rule leaves)
    ('{"response": "My card 4104 9964 15', '{"response": "My card [CREDIT_CARD]'),
    ('{"response": "My card 4104 9964 ', '{"response": "My card [CREDIT_CARD]'),
    ("paid with 5555-5555-5555-44", "paid with [CREDIT_CARD]"),
    ("amex 378282 24631", "amex [CREDIT_CARD]"),  # Amex grouping 4-6-5 / 6-..., cut
    ("card \uff14\uff11\uff10\uff14 \uff19\uff19\uff16\uff14 \uff11\uff15",
     "card [CREDIT_CARD]"),  # full-width digits
    ("4104996415", "[CREDIT_CARD]"),  # one run, cut
    # no card start: left alone
    ('{"response": "My card 4104 99', '{"response": "My card 4104 99'),  # 6 digits: an issuer number
    ("ticket 1234 5678 90", "ticket 1234 5678 90"),  # no issuer range starts with 1
    ('{"ts": 20261101', '{"ts": 20261101'),  # 2026: no issuer range
    ("ref 41 0499 6415", "ref 41 0499 6415"),  # no card grouping starts 2-4
    ("id 4104996415342208123456", "id 4104996415342208123456"),  # longer than any card
    ("My card 4104 9964 15 and more", "My card 4104 9964 15 and more"),  # not at the end
    ('{"a": "4104 9964 15"}', '{"a": "4104 9964 15"}'),  # a whole JSON line ends in }
]


@pytest.mark.parametrize(("text", "expected"), CUT_CARD_TAILS)
def test_a_card_number_cut_off_at_the_end_of_a_cut_text_is_masked(text, expected):
    assert scrub_cut_text(text) == expected
    assert scrub_cut_tail(pl.Series([text, None])).to_list() == [expected, None]


def test_cut_tail_rule_reads_only_what_the_card_rule_left():
    # a whole card at the end is the card rule's; the cut-tail rule then finds nothing more
    once, types = scrub_text("card 4111 1111 1111 1111")
    assert types == ["CREDIT_CARD"] and scrub_cut_text(once) == once
    assert scrub_cut_text(None) is None


def test_scrub_is_idempotent_and_types_ordered():
    text = "password: hunter22, mail a@b.io, ip 10.0.0.1, call +33 6 12 34 56 78"
    once, types = scrub_text(text)
    assert types == [t for t in PII_TYPES if t in {"SECRET", "EMAIL", "IP_ADDRESS", "PHONE"}]
    twice, types2 = scrub_text(once)
    assert twice == once and types2 == []


def test_frame_matches_single_string():
    corpus = [t for _, t, _ in TRUE_POSITIVES] + FALSE_POSITIVES + [
        " ".join(t for _, t, _ in TRUE_POSITIVES[:8]),
        None,
        "",
        'json-ish {"content":"call 555-123-4567 \\"q\\""}',
    ]
    df = pl.DataFrame({"a": corpus, "b": list(reversed(corpus))})
    out, types = scrub_frame(df, ["a", "b"])
    for i, (a, b) in enumerate(zip(corpus, reversed(corpus), strict=True)):
        sa, ta = scrub_text(a)
        sb, tb = scrub_text(b)
        assert out["a"][i] == sa
        assert out["b"][i] == sb
        assert types[i].to_list() == [t for t in PII_TYPES if t in set(ta) | set(tb)]


def test_frame_list_column():
    df = pl.DataFrame({"m": [["mail x@y.com", "hi"], [], None, ["4111111111111111"]]},
                      schema={"m": pl.List(pl.String)})
    out, types = scrub_frame(df, ["m"])
    assert out["m"].to_list() == [["mail [EMAIL]", "hi"], [], None, ["[CREDIT_CARD]"]]
    assert types.to_list() == [["EMAIL"], [], [], ["CREDIT_CARD"]]


# ---- issue 8 item 11: each listed miss and over-scrub (all failed before the fix) ---------------

MISSES = [
    # (text, the value that must be gone entirely, placeholder)
    ("appelez le 06-12-34-56-78", "34-56", "PHONE"),  # national, no +
    ("office (02) 9876 5432", "9876", "PHONE"),  # Australia, area code in parentheses
    ("ring 0044 20 7946 0958", "0044 20 7946 0958", "PHONE"),  # 00 prefix
    ("office 555-123-4567 x769", "769", "PHONE"),  # extension: no trailing digits leak
    ("desk (212) 555-0199 ext. 12 ok", "12 ok", "PHONE"),
    ("portable 06.12.34.56.78", "06.12.34.56.78", "PHONE"),  # dotted French, not an IP
    ("mobile 98765 43210", "98765 43210", "PHONE"),  # India
    ("cel (11) 91234-5678", "91234-5678", "PHONE"),  # Brazil
    ("bel 06-12345678", "12345678", "PHONE"),  # Netherlands
    ("móvil 612 34 56 78", "612 34 56 78", "PHONE"),  # Spain
    ("tel\u00a006\u00a012\u00a034\u00a056\u00a078", "34\u00a056", "PHONE"),  # NBSP
    ("tel ０６１２３４５６７８", "０６１２３４５６７８", "PHONE"),  # full-width digits
    ("phone_0612345678", "0612345678", "PHONE"),  # glued to an underscore
    ("iban de89 3704 0044 0532 0130 00", "3704", "IBAN"),  # lowercase
    ("IBAN DE89-3704-0044-0532-0130-00", "3704", "IBAN"),  # dashed
    ("IBANDE89370400440532013000", "DE89370400440532013000", "IBAN"),  # glued to letters
    ("my SSN is 123456789", "123456789", "SSN"),  # no dashes, next to "SSN"
    ("social security number 123 45 6789", "123 45 6789", "SSN"),
    ("link-local fe80:: and 2001:db8::", "fe80::", "IP_ADDRESS"),  # IPv6 ending in ::
    ("jcb 180000000000002", "180000000000002", "CREDIT_CARD"),  # 15-digit JCB
    ("maestro 501800000009", "501800000009", "CREDIT_CARD"),  # 12-digit Maestro
    ("card4111111111111111", "4111111111111111", "CREDIT_CARD"),  # glued
    ("write to jörg.müller@example.de", "jörg", "EMAIL"),  # non-ASCII local part
    ("?email=jane.doe%40example.com", "jane.doe", "EMAIL"),  # %40
    ("key AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "AIzaSy", "SECRET"),
    ("CI token glpat-xxxxyyyyzzzz11112222", "glpat-", "SECRET"),
    ("HF hf_abcdefghijklmnopqrstuvwxyz0123456789", "hf_abc", "SECRET"),
    ("npm npm_abcdefghijklmnopqrstuvwxyz0123456789", "npm_abc", "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc+/=\n-----END RSA PRIVATE KEY-----",
     "MIIEow", "SECRET"),
    ("hook https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "hooks.slack", "SECRET"),
    ("GOOGLE_API_KEY=abcDEF123456ghiJKL", "abcDEF123456ghiJKL", "SECRET"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI",
     "SECRET"),
    ("GET https://x.example.com/a?token=abc123def456&page=2", "abc123def456", "SECRET"),
    ("GET https://maps.example.com/api?key=Zx81kLq0ppQ", "Zx81kLq0ppQ", "SECRET"),
    ("my password is hunter2", "hunter2", "SECRET"),
    ("my name is Jörg Müller", "Müller", "PERSON"),
    ("I live at 12 Rue de la Paix, 75002 Paris.", "Rue de la Paix", "ADDRESS"),
]

OVER_SCRUBS = [
    ("updated to version 10.2.3.4", None),
    ("build 1.2.3.4.5", None),
    ("part 123-45-6789 is missing", None),
    ("customer ID 0123456789", None),  # zero-padded id
    ("numbers 01 02 03 04 05 06", None),  # digit list
    ("barcode 4006381300063 on the box", None),  # EAN-13 (Luhn-valid too)
    ("order 2024-4111111111111111", None),  # part of a longer order number
    ("ORD-4111-1111-1111-1111-22", None),
    ("ORD-2423-4921565311564926 pending", None),
    ("use logo@2x.png here", None),
    ("the secret: patience", None),
    ("my password is not working", None),  # guard for the new "my password is" rule
    ("see (password: abc123) ok", "see (password: [SECRET]) ok"),  # not eating `)`
    ("(api_key: abc123def)", "(api_key: [SECRET])"),
]


@pytest.mark.parametrize("text,value,pii_type", MISSES)
def test_issue8_misses_are_scrubbed(text, value, pii_type):
    out, types = scrub_text(text)
    assert value not in out, out
    assert f"[{pii_type}]" in out and pii_type in types, out


@pytest.mark.parametrize("text,expected", OVER_SCRUBS)
def test_issue8_over_scrubs_are_left_alone(text, expected):
    out, _ = scrub_text(text)
    assert out == (text if expected is None else expected)


def test_frame_matches_single_string_on_the_probe_set():
    """The vectorized path (Rust candidates + the same rules) gives scrub_text's output on the
    whole labelled probe set (every format and hard negative of bench/pii.py)."""
    from ml.pii_probe import probes

    texts = [p.text for p in probes(1500, seed=5)] + [t for t, _, _ in MISSES] + \
        [t for t, _ in OVER_SCRUBS]
    out, types = scrub_frame(pl.DataFrame({"t": texts}), ["t"])
    for i, t in enumerate(texts):
        want, want_types = scrub_text(t)
        assert out["t"][i] == want, t
        assert types[i].to_list() == want_types, t


def test_probe_recall_and_precision_targets():
    """On a probe set the rules were not tuned on (seed 99): structured recall >= 0.97 and
    precision >= 0.95 (the published figures come from bench/pii.py)."""
    import importlib.util
    from pathlib import Path

    from ml.pii_probe import STRUCTURED, probes

    spec = importlib.util.spec_from_file_location(
        "bench_pii", Path(__file__).resolve().parents[2] / "bench" / "pii.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    items = probes(800, seed=99)
    spans = [[s for s in bench.our_spans(p.text) if s[2] in STRUCTURED] for p in items]
    per_type, _, correct, reported = bench.score(items, spans)
    found = sum(per_type[t][0] for t in STRUCTURED)
    total = sum(per_type[t][1] for t in STRUCTURED)
    assert found / total >= 0.97
    assert correct / reported >= 0.95
