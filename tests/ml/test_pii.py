"""PII scrubbing: true positives per type, false positives, vectorized == single-string."""

from __future__ import annotations

import polars as pl
import pytest

from ml.pii import PII_TYPES, find_pii, iban_valid, luhn_valid, scrub_frame, scrub_text

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
