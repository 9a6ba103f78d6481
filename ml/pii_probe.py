"""A labelled PII probe set: chat-like texts with the exact span and type of every PII value, and
hard negatives (texts with digits, dots and ``@`` that are no PII).

Used by ``bench/pii.py`` (recall / precision of ``ml.pii`` and Presidio on the same texts) and by
the tests (``scrub_frame`` and ``scrub_text`` agree on it). Values are random but valid where a
checksum exists (Luhn, mod-97, EAN-13); formats cover US, UK, FR, DE, ES, IT, NL, IN, BR, JP and
AU phone numbers, ten IBAN countries, seven card networks, and secrets of many kinds. A probe is
``Probe(text, spans)`` with ``spans`` a list of ``(start, end, pii_type)``.
"""

from __future__ import annotations

import random
import string
from typing import NamedTuple

from ml.demo.generate import luhn_check_digit

STRUCTURED = ("SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE")
DISCLOSURE = ("PERSON", "ADDRESS")


class Probe(NamedTuple):
    text: str
    spans: list[tuple[int, int, str]]
    kind: str  # the generator that made it (a PII format or a negative's name)


# ---- values ------------------------------------------------------------------------------------

_FIRST = ["Anna", "Jörg", "María", "Luca", "Chloé", "Sven", "Priya", "Kenji", "Olu", "Sarah",
          "Mehmet", "Zoë", "João", "Ewa", "Liam", "Fatima"]
_LAST = ["Müller", "García", "Rossi", "Dubois", "Nakamura", "Okafor", "Smith", "Kowalski",
         "van Dijk", "Øster", "Silva", "Patel", "O'Brien", "Nguyen"]
_DOMAINS = ["gmail.com", "example.org", "mail.example.co.uk", "web.de", "orange.fr", "libero.it",
            "company.io", "uni-koeln.de", "yahoo.co.jp", "outlook.com"]
_FILLERS = ["Hi,", "Hello again.", "Thanks for the quick reply!", "ok", "Sorry to bother you.",
            "My order still hasn't arrived.", "The app crashed twice today.", "Quick question:",
            "I tried that already.", "Bonjour,", "Hallo,", "Please update my account."]
_ENDINGS = ["", " Thanks!", " thx", " Can you help?", " Regards.", ".", " asap please", " :)"]


def _digits(r: random.Random, n: int, first: str = "0123456789") -> str:
    return r.choice(first) + "".join(r.choice("0123456789") for _ in range(n - 1))


def _luhn_complete(payload: str) -> str:
    return payload + luhn_check_digit(payload)


def _ean13(r: random.Random) -> str:
    body = _digits(r, 12, "4597")
    total = sum((1 if i % 2 == 0 else 3) * int(c) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def _card(r: random.Random) -> tuple[str, str]:
    net = r.choice(["visa", "mc", "mc2", "amex", "discover", "jcb", "diners", "maestro12",
                    "unionpay"])
    prefix, n = {
        "visa": ("4", 16), "mc": (f"5{r.randint(1, 5)}", 16), "mc2": (str(r.randint(2221, 2720)), 16),
        "amex": (r.choice(["34", "37"]), 15), "discover": ("6011", 16),
        "jcb": (str(r.randint(3528, 3589)), 16), "diners": (r.choice(["36", "38"]), 14),
        "maestro12": (r.choice(["5018", "5020", "6304", "6759"]), 12), "unionpay": ("62", 16),
    }[net]
    while True:
        num = _luhn_complete(prefix + _digits(r, n - len(prefix) - 1))
        if n not in (12, 13) or not _gtin_ok(num):
            break
    style = r.choice(["space", "dash", "none", "space"])
    if n == 15:
        groups = [num[:4], num[4:10], num[10:]]
    elif n == 14:
        groups = [num[:4], num[4:10], num[10:]]
    else:
        groups = [num[i:i + 4] for i in range(0, n, 4)]
    sep = {"space": " ", "dash": "-", "none": ""}[style]
    return sep.join(groups), net


def _gtin_ok(d: str) -> bool:
    total = sum((3 if i % 2 else 1) * int(c) for i, c in enumerate(reversed(d)))
    return total % 10 == 0


_IBAN_SPEC = {  # country: BBAN maker
    "DE": lambda r: _digits(r, 18), "FR": lambda r: _digits(r, 23),
    "GB": lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + _digits(r, 14),
    "ES": lambda r: _digits(r, 20), "IT": lambda r: r.choice(string.ascii_uppercase) + _digits(r, 22),
    "NL": lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + _digits(r, 10),
    "BE": lambda r: _digits(r, 12), "CH": lambda r: _digits(r, 17), "AT": lambda r: _digits(r, 16),
    "PL": lambda r: _digits(r, 24),
}


def _iban(r: random.Random) -> tuple[str, str]:
    cc = r.choice(list(_IBAN_SPEC))
    bban = _IBAN_SPEC[cc](r)
    num = int("".join(str(int(c, 36)) for c in bban + cc + "00"))
    iban = f"{cc}{98 - num % 97:02d}{bban}"
    style = r.choice(["grouped", "compact", "lower", "dash", "grouped"])
    if style == "compact":
        return iban, cc
    groups = [iban[i:i + 4] for i in range(0, len(iban), 4)]
    if style == "lower":
        return " ".join(groups).lower() if r.random() < 0.5 else iban.lower(), cc
    return ("-" if style == "dash" else " ").join(groups), cc


def _phone(r: random.Random) -> tuple[str, str]:
    d = lambda n, first="0123456789": _digits(r, n, first)  # noqa: E731
    c = r.choice(["US", "UK", "FR", "DE", "ES", "IT", "NL", "IN", "BR", "JP", "AU"])
    a3, x3, l4 = d(3, "23456789"), d(3, "23456789"), d(4)
    formats = {
        "US": [f"({a3}) {x3}-{l4}", f"{a3}-{x3}-{l4}", f"{a3}.{x3}.{l4}", f"+1 {a3} {x3} {l4}",
               f"1-{a3}-{x3}-{l4}", f"+1-{a3}-{x3}-{l4}", f"{a3} {x3} {l4}"],
        "UK": [f"020 {d(4, '3789')} {d(4)}", f"07{d(3)} {d(6)}", f"+44 20 {d(4)} {d(4)}",
               f"+44 (0)20 {d(4)} {d(4)}", f"0044 7{d(3)} {d(6)}", f"0161 {d(3)} {d(4)}",
               f"+447{d(9)}"],
        "FR": [f"06 {d(2)} {d(2)} {d(2)} {d(2)}", f"07.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
               f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}", f"0033 1 {d(2)} {d(2)} {d(2)} {d(2)}",
               f"01-{d(2)}-{d(2)}-{d(2)}-{d(2)}", f"06{d(8)}", f"+33 (0)6 {d(2)} {d(2)} {d(2)} {d(2)}"],
        "DE": [f"030 {d(8)}", f"0151 {d(8)}", f"+49 30 {d(8)}", f"089/{d(7)}", f"030-{d(4)} {d(4)}",
               f"+49 (0)151 {d(4)} {d(4)}", f"0049 151 {d(8)}", f"0221 {d(3)} {d(2)} {d(2)}"],
        "ES": [f"6{d(2)} {d(2)} {d(2)} {d(2)}", f"+34 6{d(2)} {d(3)} {d(3)}", f"91{d(1)} {d(3)} {d(3)}",
               f"+34 91 {d(3)} {d(2)} {d(2)}"],
        "IT": [f"3{d(2)} {d(3)} {d(4)}", f"+39 3{d(2)} {d(3)} {d(4)}", f"06 {d(4)} {d(4)}",
               f"02 {d(8)}", f"+39 06 {d(8)}"],
        "NL": [f"06-{d(8)}", f"020-{d(7)}", f"+31 6 {d(8)}", f"06 {d(4)} {d(4)}", f"+31 (0)20 {d(7)}"],
        "IN": [f"9{d(4)} {d(5)}", f"+91 9{d(4)} {d(5)}", f"+91-9{d(9)}", f"+91 80 {d(4)} {d(4)}"],
        "BR": [f"(11) 9{d(4)}-{d(4)}", f"+55 11 9{d(4)}-{d(4)}", f"(21) {d(4, '23')}-{d(4)}",
               f"+55 (21) 9{d(4)}-{d(4)}"],
        "JP": [f"090-{d(4)}-{d(4)}", f"03-{d(4)}-{d(4)}", f"+81 90 {d(4)} {d(4)}",
               f"+81-3-{d(4)}-{d(4)}"],
        "AU": [f"04{d(2)} {d(3)} {d(3)}", f"(02) {d(4)} {d(4)}", f"+61 4{d(2)} {d(3)} {d(3)}",
               f"+61 2 {d(4)} {d(4)}"],
    }
    value = r.choice(formats[c])
    if r.random() < 0.12:
        value += r.choice([f" x{d(3)}", f" ext. {d(2)}", f" ext {d(4)}", f"x{d(3)}"])
    return value, c


def _ipv6(r: random.Random) -> str:
    h = lambda: f"{r.randrange(0x10000):x}"  # noqa: E731
    return r.choice([
        ":".join(h() for _ in range(8)),
        f"2001:db8:{h()}::{h()}:{h()}",
        f"fe80::{h()}:{h()}:{h()}:{h()}",
        f"2001:{h()}:{h()}::",
        "fe80::",
        f"2a02:{h()}:{h()}:{h()}::{h()}",
    ])


def _token(r: random.Random, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def _secret(r: random.Random) -> tuple[str, int, int, str]:
    """(text, start, end of the secret in it, kind)."""
    al = string.ascii_letters + string.digits
    kinds = {
        "google": lambda: ("my key is {}", "AIza" + _token(r, 35, al + "_-")),
        "gitlab": lambda: ("token {} for CI", "glpat-" + _token(r, 20, al + "_-")),
        "hf": lambda: ("HF_TOKEN {} in the notebook", "hf_" + _token(r, 34)),
        "npm": lambda: ("//registry/:_authToken {}", "npm_" + _token(r, 36)),
        "github": lambda: ("pushed with {}", "ghp_" + _token(r, 36)),
        "openai": lambda: ("export OPENAI_API_KEY and then {}", "sk-proj-" + _token(r, 40, al + "_-")),
        "stripe": lambda: ("stripe key {}", "sk_live_" + _token(r, 24)),
        "aws_id": lambda: ("aws id {}", "AKIA" + _token(r, 16, string.ascii_uppercase + string.digits)),
        "slack_token": lambda: ("bot {} broke", f"xoxb-{_digits(r, 11)}-{_token(r, 24)}"),
        "slack_hook": lambda: ("post to {} pls", "https://hooks.slack.com/services/T"
                               + _token(r, 8, string.ascii_uppercase + string.digits) + "/B"
                               + _token(r, 8, string.ascii_uppercase + string.digits) + "/"
                               + _token(r, 24)),
        "jwt": lambda: ("cookie {}", "eyJ" + _token(r, 20) + "." + _token(r, 30) + "." + _token(r, 25)),
        "pem": lambda: ("here is the key\n{}\nthanks", "-----BEGIN RSA PRIVATE KEY-----\n"
                        + "\n".join(_token(r, 64, al + "+/") for _ in range(3))
                        + "\n-----END RSA PRIVATE KEY-----"),
        "env_google": lambda: ("GOOGLE_API_KEY={}", _token(r, 39)),
        "aws_secret": lambda: ("aws_secret_access_key = {}", _token(r, 40, al + "/+")),
        "url_token": lambda: ("open https://api.example.com/v1/files?token={}&page=2", _token(r, 32)),
        "url_key": lambda: ("GET https://maps.example.com/api?key={}", _token(r, 30)),
        "said_password": lambda: ("my password is {} but it fails", r.choice(
            ["hunter2", "Summer2024!", "p@ssw0rd", "Tr0ub4dor&3", "letmein99", "correcthorse"])),
        "json_password": lambda: ('{{"user": "bob", "password": "{}"}}', _token(r, 12)),
        "bearer": lambda: ("curl -H 'Authorization: Bearer {}'", _token(r, 40, al + "._-")),
        "db_pwd": lambda: ("DB_PASSWORD: {}", _token(r, 14)),
    }
    kind = r.choice(list(kinds))
    template, value = kinds[kind]()
    start = template.index("{}")
    return template.replace("{}", value, 1).replace("{{", "{").replace("}}", "}"), \
        start - template[:start].count("{{"), start - template[:start].count("{{") + len(value), kind


# ---- probes ------------------------------------------------------------------------------------


def _embed(r: random.Random, templates: list[str], value: str) -> tuple[str, int, int]:
    t = r.choice(templates)
    pre, post = t.split("{}")
    if r.random() < 0.5:
        pre = r.choice(_FILLERS) + " " + pre
    post = post + r.choice(_ENDINGS)
    return pre + value + post, len(pre), len(pre) + len(value)


_PHONE_T = ["call me at {}", "my number is {}", "reach me on {} after 5pm", "{} is my cell",
            "Tel: {}", "whatsapp {}", "you can also try {} tomorrow", "phone: {}", "mobile {}",
            "ring {} if needed", "contact number {}", "tel:{}", "phone_{}", "my new number ({})"]
_EMAIL_T = ["email me at {}", "my mail is {}", "contact: <{}>", "mailto:{}", "send it to {} pls",
            "{} is my address", "email_{}", "user={}"]
_CARD_T = ["card {} exp 12/27", "my card number is {}", "paid with {}", "CC:{}", "use {} please",
           "visa {}", "card_{}"]
_IBAN_T = ["IBAN {}", "my iban: {}", "transfer to {} please", "IBAN:{}", "account {} at my bank"]
_IP_T = ["my ip is {}", "connecting from {}", "server {} is down", "ping {} fails",
         "IP={}", "ssh root@{}"]
_SSN_T = ["SSN {}", "my social security number is {}", "ssn: {}", "SSN#{}", "it's {} (SSN)"]


def _sep_variants(r: random.Random, value: str) -> str:
    """Occasionally NBSP separators or full-width digits, as pasted from other apps."""
    x = r.random()
    if x < 0.06:
        return value.replace(" ", "\u00a0")
    if x < 0.10:
        return value.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    return value


def _positive(r: random.Random) -> Probe:
    t = r.choice(["PHONE"] * 5 + ["EMAIL"] * 3 + ["CREDIT_CARD"] * 3 + ["IBAN"] * 3
                 + ["IP_ADDRESS"] * 2 + ["SSN"] * 2 + ["SECRET"] * 4 + ["PERSON", "ADDRESS"])
    if t == "SECRET":
        text, s, e, kind = _secret(r)
        pre = r.choice(_FILLERS) + " " if r.random() < 0.4 else ""
        return Probe(pre + text, [(s + len(pre), e + len(pre), t)], f"SECRET/{kind}")
    if t == "PHONE":
        value, kind = _phone(r)
        text, s, e = _embed(r, _PHONE_T, _sep_variants(r, value))
    elif t == "EMAIL":
        local = r.choice([f"{r.choice(_FIRST)}.{r.choice(_LAST)}", f"{r.choice(_FIRST)}_{r.randint(1, 99)}",
                          f"{r.choice(_FIRST)[0]}{r.choice(_LAST)}+shop",
                          f"{r.choice(_FIRST)}{r.randint(70, 99)}"]).lower().replace(" ", "")
        at = "%40" if r.random() < 0.07 else "@"
        value, kind = f"{local}{at}{r.choice(_DOMAINS)}", "email" if at == "@" else "email%40"
        text, s, e = _embed(r, _EMAIL_T, value)
    elif t == "CREDIT_CARD":
        value, kind = _card(r)
        text, s, e = _embed(r, _CARD_T, _sep_variants(r, value))
    elif t == "IBAN":
        value, kind = _iban(r)
        text, s, e = _embed(r, _IBAN_T, value)
    elif t == "IP_ADDRESS":
        if r.random() < 0.55:
            value, kind = ".".join(str(r.randint(1, 254)) for _ in range(4)), "ipv4"
        else:
            value, kind = _ipv6(r), "ipv6"
        text, s, e = _embed(r, _IP_T, value)
    elif t == "SSN":
        area = r.choice([r.randint(1, 665), r.randint(667, 899)])
        a, g, sr = f"{area:03d}", f"{r.randint(1, 99):02d}", f"{r.randint(1, 9999):04d}"
        value, kind = r.choice([(f"{a}-{g}-{sr}", "dashed"), (f"{a} {g} {sr}", "spaced"),
                                (f"{a}{g}{sr}", "bare")])
        text, s, e = _embed(r, _SSN_T, value)
    elif t == "PERSON":
        name = r.choice(_FIRST) + (" " + r.choice(_LAST) if r.random() < 0.7 else "")
        text, s, e = _embed(r, ["my name is {}", "My name is {} and I need help", "I'm called {}",
                                "hi, my name is {}."], name)
        kind = "person"
    else:
        addr = r.choice([f"{r.randint(1, 250)} Baker Street, London", f"{r.randint(1, 99)} rue de la Paix, "
                         f"75002 Paris", f"Hauptstraße {r.randint(1, 120)}, 10115 Berlin",
                         f"{r.randint(1, 999)} Main St Apt {r.randint(1, 30)}, Springfield"])
        text, s, e = _embed(r, ["I live at {}", "my address is {}", "please ship it to {}",
                                "my new address is {}"], addr)
        kind = "address"
    return Probe(text, [(s, e, t)], f"{t}/{kind}")


def _negative(r: random.Random) -> Probe:
    d = lambda n, first="0123456789": _digits(r, n, first)  # noqa: E731
    n9 = lambda: r.randint(0, 9)  # noqa: E731
    part = lambda: f"{d(3, '1234')}-{d(2, '123')}-{d(4, '123')}"  # noqa: E731
    kinds = {
        "version": lambda: r.choice([f"updated to version {r.randint(1, 20)}.{r.randint(0, 9)}."
                                     f"{r.randint(0, 30)}.{r.randint(0, 99)}",
                                     f"v{r.randint(1, 9)}.{n9()}.{n9()}.{n9()} crashes",
                                     f"build 1.{n9()}.{n9()}.{n9()}.{r.randint(1, 9)}"]),
        "part_number": lambda: r.choice([f"part {part()} is missing", f"P/N {part()}",
                                         f"model no. {part()}"]),
        "order_number": lambda: r.choice([f"order {d(20, '123456789')} shipped",
                                          f"Order #{d(16, '123456789')}{d(2)}",
                                          f"ORD-{d(4)}-{d(16, '4')} pending",
                                          f"invoice {d(10, '123456789')}"]),
        "ean": lambda: f"barcode {_ean13(r)} on the box",
        "zero_padded": lambda: r.choice([f"customer ID 000{d(7)}", f"ticket 00{d(8, '12345')}",
                                         f"ref 0{d(9, '123456789')}"]),
        "digit_list": lambda: r.choice(["numbers 01 02 03 04 05", "pick 10 20 30 40 50",
                                        f"sizes {', '.join(str(r.randint(1, 99)) for _ in range(8))}",
                                        "1, 2, 3, 4, 5, 6, 7, 8"]),
        "date": lambda: r.choice([f"on {r.randint(2019, 2026)}-0{r.randint(1, 9)}-1{r.randint(0, 9)} "
                                  f"at 10:{r.randint(10, 59)}",
                                  f"from 0{r.randint(1, 9)}.0{r.randint(1, 9)}.2024 to 1{r.randint(0, 2)}.03.2024",
                                  f"Date 01-02-2024 10:{r.randint(10, 59)}"]),
        "price": lambda: r.choice([f"total ${r.randint(1, 9)},{d(3)}.{d(2)}", f"{r.randint(1, 9)} {d(3)},00 €",
                                   f"costs 1.{d(3)}.{d(3)},00 COP"]),
        "asset": lambda: r.choice(["logo@2x.png", "icon@3x.webp missing", "see hero@2x.jpg"]),
        "timestamp": lambda: f"ts={d(13, '1')}",
        "code": lambda: r.choice(["std::vector<int>", "time 12:30:45", "1920x1080 screen",
                                  "Foo::bar() call", "ratio 16:9"]),
        "tracking": lambda: f"tracking 1Z{d(3)}AA{d(10)}",
        "prose_secret": lambda: r.choice(["the secret: patience", "my password is not working",
                                          "password field is empty", "I forgot my password",
                                          "the token: expired yesterday"]),
        "uuid": lambda: f"request {_token(r, 8, '0123456789abcdef')}-{_token(r, 4, '0123456789abcdef')}"
                        f"-4{_token(r, 3, '0123456789abcdef')}-a{_token(r, 3, '0123456789abcdef')}"
                        f"-{_token(r, 12, '0123456789abcdef')}",
        "isbn": lambda: f"ISBN 978-3-16-{d(6)}-{d(1)}",
        "coords": lambda: f"at {r.randint(10, 60)}.{d(4)}, {r.randint(1, 30)}.{d(4)}",
        "sku": lambda: f"SKU-{d(6)}-{d(2)}",
    }
    kind = r.choice(list(kinds))
    text = kinds[kind]()
    if r.random() < 0.5:
        text = r.choice(_FILLERS) + " " + text
    return Probe(text, [], f"negative/{kind}")


def probes(n: int = 3000, seed: int = 11, negative_share: float = 0.3) -> list[Probe]:
    """``n`` probes: about ``negative_share`` hard negatives, the rest one PII value each."""
    r = random.Random(seed)
    return [_negative(r) if r.random() < negative_share else _positive(r) for _ in range(n)]
