"""PII scrubbing: vectorized over Polars string columns, and the same rules for one string.

Every detector replaces what it finds by a typed placeholder (``[EMAIL]``, ``[PHONE]``,
``[CREDIT_CARD]``, ``[IBAN]``, ``[IP_ADDRESS]``, ``[SSN]``, ``[SECRET]``, ``[PERSON]``,
``[ADDRESS]``). Detectors run in a fixed order (``PII_TYPES``): secrets first (tokens contain
digits and ``@``), then e-mails, IBANs, card numbers, SSNs, IP addresses, phone numbers, and the
self-disclosure cues ("my name is X", "I live at 12 ...").

Two kinds of rules:

* rules both engines run (most secrets, names, addresses): patterns without look-around, read the
  same by Python ``re`` and Rust ``regex``; ``scrub_frame`` runs them with ``str.replace_all``.
* rules that need context, checksums or look-around (e-mail, IBAN, card, SSN, IP, phone,
  key=value and "my password is" secrets): a Python rule plus a *candidate* pattern (Rust / RE2 /
  Python) that matches a superset of the texts the rule changes. ``scrub_frame`` picks the
  candidate texts with Rust and runs the Python rule on those only.

``scrub_frame`` (the ingest path): one union ``str.contains`` picks the rows that can hold
anything, those rows are scrubbed once per distinct text (chat logs repeat system prompts and
earlier turns), and per PII type one scan picks the texts the type's rules rewrite.
``scrub_text`` / ``find_pii`` run the same rules one string at a time; ``tests/ml/test_pii.py``
checks both give the same output, on the labelled probe set of ``ml/pii_probe.py`` too.

Context (see the rules): an undashed or spaced SSN needs "SSN" / "social security" near it, a
dashed one is left alone after a part / order number cue; a dotted quad after "v", "version",
"build", ... or followed by more dots is a version, not an IP; phone numbers need a plausible
shape (``+CC``, ``00CC``, national with trunk 0, North American, Spanish, Indian, Brazilian,
Italian mobile) or a phone cue, a bare digit run only next to a phone cue and never next to an
order / id cue, arithmetic digit lists are no phones, extensions go with the number; cards need
an issuer range with its lengths and Luhn, an EAN-13 / UPC-A barcode is no card, nor is a run
joined by dashes to more digits. Full-width digits and NBSP / thin spaces count as digits and
spaces. Out of scope: names and addresses without a self-disclosure cue.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

# ---- character classes -----------------------------------------------------------------------
# Written with literal characters (no ``\uXXXX`` escapes), so the same text is read by Python
# ``re``, Rust ``regex`` and DuckDB's RE2.

_FW_DIGITS = "\uff10-\uff19"  # full-width digits
_D = f"[0-9{_FW_DIGITS}]"  # a digit, ASCII or full-width
_SPACES = " \u00a0\u202f\u2009"  # space, NBSP, narrow NBSP, thin space
_TO_ASCII = str.maketrans("\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"
                          "\u00a0\u202f\u2009\uff0b\uff20", "0123456789   +@")


def _ascii_digits(s: str) -> str:
    """Full-width digits as ASCII digits, odd spaces as spaces (same length)."""
    return s.translate(_TO_ASCII)


# ---- rules that both engines run: (pattern, python replacement, polars replacement) ----------

_LEFT = r"(^|[^A-Za-z0-9])"  # consumed and written back: a boundary that also lets `_` touch

_SECRET_PATTERNS: list[tuple[str, str, str]] = [
    (_LEFT + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}", r"\1[SECRET]", "${1}[SECRET]"),
    (_LEFT + r"sk-[A-Za-z0-9_-]{20,}", r"\1[SECRET]", "${1}[SECRET]"),
    (r"(?:AKIA|ASIA)[0-9A-Z]{16}", "[SECRET]", "[SECRET]"),
    (r"(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}", "[SECRET]", "[SECRET]"),
    (r"github_pat_[A-Za-z0-9_]{22,}", "[SECRET]", "[SECRET]"),
    (r"glpat-[A-Za-z0-9_-]{20,}", "[SECRET]", "[SECRET]"),
    (r"AIza[0-9A-Za-z_-]{35}", "[SECRET]", "[SECRET]"),
    (_LEFT + r"hf_[A-Za-z0-9]{30,}", r"\1[SECRET]", "${1}[SECRET]"),
    (_LEFT + r"npm_[A-Za-z0-9]{36}", r"\1[SECRET]", "${1}[SECRET]"),
    (r"xox[abposre]-[A-Za-z0-9-]{10,}", "[SECRET]", "[SECRET]"),
    (r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]+",
     "[SECRET]", "[SECRET]"),
    (r"https://(?:canary\.|ptb\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/[A-Za-z0-9_-]+",
     "[SECRET]", "[SECRET]"),
    # PEM private keys, the END line optional (a pasted key is often cut)
    (r"-----BEGIN[A-Z ]*PRIVATE KEY-----[A-Za-z0-9+/=\s\\]*(?:-----END[A-Z ]*PRIVATE KEY-----)?",
     "[SECRET]", "[SECRET]"),
    (r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "[SECRET]", "[SECRET]"),
    (r"(?i)\b(bearer)[ \t]+[A-Za-z0-9._~+/=-]{16,}", r"\1 [SECRET]", "${1} [SECRET]"),
    # credentials in URL query strings: ?token=..., &key=..., &X-Amz-Signature=...
    (r"(?i)([?&;](?:token|access_token|id_token|refresh_token|api_key|apikey|key|auth|sig"
     r"|signature|secret|client_secret|password|pwd|pass|code|session|sessionid|jwt"
     r"|x-amz-signature|x-amz-credential|x-goog-signature)=)[^&\s#\"'<>\[]{4,}",
     r"\1[SECRET]", "${1}[SECRET]"),
]

# ---- rules run in Python on candidate texts (context, checksums, look-around) ----------------
# Each has a candidate pattern (Rust / RE2 / Python) matching a superset of the texts the rule
# changes: the vectorized path runs the Python rule only on the distinct texts it picks.

_STOPWORDS = frozenset(
    "not now too very incorrect wrong correct right invalid expired working the a an still being "
    "same different required empty blank case no ok fine weak strong long short set changed reset "
    "locked saved stored in on at for also just only always never what which that this it my your "
    "is was will would should must can cannot can't isn't wasn't does doesn't and or but if when "
    "where how why who missing unknown incorrectly there here hidden secret private".split())
_PLACEHOLDER_VALUES = ("xxx", "***", "...", "<", "${", "$", "%", "{{", "your", "my_", "example",
                       "changeme", "placeholder", "redacted", "null", "none", "true", "false")

# key = value / key: value, where the key names a credential (GOOGLE_API_KEY=...,
# aws_secret_access_key = ..., "password": "...", db_password: ...)
_KV_SECRET = re.compile(
    r"(?i)(?<![A-Za-z0-9])((?:[A-Za-z0-9]+[_.-])*(?:api[ _-]?key|apikey|api[_-]?secret|api[_-]?token"
    r"|secret(?:[_-]?(?:access[_-]?)?key)?|access[_-]?key(?:[_-]?id)?|private[_-]?key|[A-Za-z0-9]+[_-]key"
    r"|(?:access|auth|refresh|bearer|session|api|bot|slack|github|gitlab|npm|hf)[_-]?token|token"
    r"|password|passwd|passphrase|pwd|credentials?|client[_-]?secret))"
    r"([\"']?[ \t]*(?::=|=>|[:=])[ \t]*[\"'`]?)"
    r"([^\s\"'`,;()\[\]{}<>]+)", re.ASCII)
_KV_CAND = ("(?i)(?:key|secret|token|password|passwd|passphrase|pwd|credentials?|key_id|key-id)"
            "[\"']?[ \t]*(?::=|=>|[:=])[ \t]*[\"'`]?[^\\s\"'`,;()\\[\\]{}<>]")


_CODE_PATH = re.compile(r"[A-Za-z_]+(?:\.[A-Za-z_]+)+")


def _kv_secret_sub(m: re.Match[str]) -> str:
    name, sep, value = m.group(1), m.group(2), m.group(3)
    value_clean = value.rstrip(".:!?")
    tail = value[len(value_clean):]
    low = value_clean.lower()
    if len(value_clean) < 4 or low in _STOPWORDS or low.startswith(_PLACEHOLDER_VALUES):
        return m.group(0)
    if m.string[m.end():m.end() + 1] in ("(", "[") or _CODE_PATH.fullmatch(value_clean):
        return m.group(0)  # credentials = Creds.from_file(...), token = os.environ[...]
    code_like = "=" in sep and " " not in sep.strip("\"'`")  # key=value, KEY = value
    strong = (any(c.isdigit() for c in value_clean) or not value_clean.isalnum()
              or (any(c.isupper() for c in value_clean[1:]) and value_clean != value_clean.upper()))
    if value_clean.replace("_", "").isalpha() and not strong:
        return m.group(0)  # "secret: patience", credentials=credentials: words, identifiers
    if not (code_like or strong or len(value_clean) >= 12):
        return m.group(0)
    return f"{name}{sep}[SECRET]{tail}"


# "my password is X", "the wifi password was X", "my PIN is 1234"
_SAID_SECRET = re.compile(
    r"(?i)\b((?:my|the|our|your)[ \t]+(?:new[ \t]+|old[ \t]+|current[ \t]+|temporary[ \t]+"
    r"|wifi[ \t]+|wi-fi[ \t]+|account[ \t]+|login[ \t]+|admin[ \t]+|email[ \t]+)?"
    r"(?:password|passcode|passphrase|pin|pin code|pwd|api key|secret key|access token|token)"
    r"[ \t]+(?:is|was|is now|=|:)[ \t]+[\"'\u201c\u2018]?)([^\s\"'\u201d\u2019,;()]+)", re.ASCII)
_SAID_CAND = (r"(?i)(?:password|passcode|passphrase|pin|pwd|key|token)[ \t]+(?:is|was|=|:)"
              r"[ \t]+")


def _said_secret_sub(m: re.Match[str]) -> str:
    value = m.group(2)
    value_clean = value.rstrip(".!?:")
    if len(value_clean) < 3 or value_clean.lower() in _STOPWORDS or value_clean.startswith("["):
        return m.group(0)
    return f"{m.group(1)}[SECRET]{value[len(value_clean):]}"


# e-mail: non-ASCII local parts and domains, `_`, URL-encoded `%40`, full-width `＠`
_LOCAL = "A-Za-z0-9._%+'\\-\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"
_DOMAIN = "A-Za-z0-9\\-\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"
_EMAIL = re.compile(
    rf"[{_LOCAL}_]+(?:@|%40|\uff20)[{_DOMAIN}]+(?:\.[{_DOMAIN}]+)*\.([A-Za-z]{{2,}})(?![A-Za-z0-9-])",
    re.ASCII)
_EMAIL_CAND = "(?:@|%40|\uff20)[^@\\s]*\\.[A-Za-z]{2}"
_FILE_EXT = frozenset("png jpg jpeg gif svg webp bmp ico tif tiff avif heic pdf css js mjs cjs ts "
                      "tsx jsx json yaml yml toml txt csv html htm xml scss less map lock vue"
                      .split())


def _email_sub(m: re.Match[str]) -> str:
    if m.group(1).lower() in _FILE_EXT:  # logo@2x.png, icon@3x.webp, pkg@types.d.ts
        return m.group(0)
    return "[EMAIL]"


# IBAN candidates: country code, check digits, 11-30 alphanumerics in groups (space, NBSP or dash
# optional), any case. Validated with mod-97; the longest prefix that validates is replaced.
_IBAN = re.compile(
    rf"(?i)(?<![0-9])[A-Z]{{2}}[0-9]{{2}}(?:[{_SPACES}-]?[A-Z0-9]{{4}}){{2,7}}"
    rf"(?:[{_SPACES}-]?[A-Z0-9]{{1,3}})?", re.ASCII)
_IBAN_CAND = rf"(?i)[A-Z]{{2}}[0-9]{{2}}[{_SPACES}-]?[A-Z0-9]{{4}}[{_SPACES}-]?[A-Z0-9]{{4}}"

# card candidates: 12-19 digits, single spaces, NBSPs or dashes allowed between digits.
_CARD_SEP = f"[{_SPACES}-]"
_CARD = re.compile(rf"(?<!{_D})(?:{_D}{_CARD_SEP}?){{11,18}}{_D}(?!{_D})")
_CARD_CAND = rf"(?:{_D}{_CARD_SEP}?){{11,18}}{_D}"

# US SSN: three groups (dash, space, dot or none); validated with the SSA rules and the context
_SSN = re.compile(rf"(?<!{_D})(?<!{_D}[-.])({_D}{{3}})([{_SPACES}.-]?)({_D}{{2}})\2({_D}{{4}})"
                  rf"(?!{_D})(?![-.]{_D})")
_SSN_CAND = rf"{_D}{{3}}[{_SPACES}.-]?{_D}{{2}}[{_SPACES}.-]?{_D}{{4}}"
_SSN_CUE = re.compile(r"(?i)(?:\bssn|\bss#|social[ \t]+security|soc\.?[ \t]*sec|\bsozialversicherungs"
                      r"|\bsin\b|\bnss\b|\btaxpayer|\btin\b)")
_ID_CUE = re.compile(
    r"(?i)(?:\b(?:part|p/n|pn|sku|model|item|ref|reference|article|art|serial|s/n|sn|order|invoice"
    r"|product|catalog|catalogue|cat|po|ticket|case|tracking|booking|confirmation|transaction"
    r"|receipt|account|acct|customer|client|member|policy|claim|id|nr|batch|lot"
    r"|version|build)\b|\bno\.|#)")
_PHONE_CUE = re.compile(
    r"(?i)(?:phone|\btel\b|\btel\.|t[ée]l[ée]phone|telefon|mobile?|\bmob\b|\bcell|handy|whats ?app"
    r"|\bcall|\bring\b|\btext\b|\bsms\b|\bfax|\bnumber|num[ée]ro|nummer|n[úu]mero|\breach\b"
    r"|\bcontact)")


def _context(m: re.Match[str], chars: int = 32) -> str:
    return m.string[max(0, m.start() - chars):m.start()]


def _ssn_sub(m: re.Match[str]) -> str:
    area, sep, group, serial = m.group(1), m.group(2), m.group(3), m.group(4)
    a, g, s = int(_ascii_digits(area)), int(_ascii_digits(group)), int(_ascii_digits(serial))
    if a == 0 or a == 666 or a >= 900 or g == 0 or s == 0:
        return m.group(0)
    ctx = _context(m, 40)
    if _SSN_CUE.search(ctx) or _SSN_CUE.search(m.string[m.end():m.end() + 12]):
        return "[SSN]"
    if sep == "-" and not _ID_CUE.search(ctx):
        return "[SSN]"  # the dashed form alone, unless a part / order number cue precedes it
    return m.group(0)


# IP addresses: IPv4 with a version-string guard, IPv6 validated by ``ipaddress``
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9.])(?:{_OCTET}\.){{3}}{_OCTET}(?![0-9])(?!\.[0-9])", re.ASCII)
_IPV4_CAND = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
_VERSION_CUE = re.compile(
    r"(?i)(?:\bv|\bver\.?|\bversion|\bversi[oó]n|\brelease|\brel\.?|\bbuild|\bfirmware|\bfw|\bupdate"
    r"|\bpatch|\bsdk|\bkernel|\bchrome|\bfirefox|\bedge|\bpython|\bnode|\bjava|\bios|\bandroid"
    r"|\bwindows|\bmacos|\bapp)[ \t:=/-]*(?:is[ \t]+|to[ \t]+|of[ \t]+)?$")
_IPV6 = re.compile(r"(?<![0-9A-Za-z:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}"
                   r"|(?:[0-9]{1,3}\.){3}[0-9]{1,3})?(?![0-9A-Za-z:])", re.ASCII)
_IPV6_CAND = (r"[0-9A-Fa-f]{1,4}::|::[0-9A-Fa-f]{1,4}"
              r"|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}")


def _ipv4_sub(m: re.Match[str]) -> str:
    before = m.string[max(0, m.start() - 24):m.start()]
    if _VERSION_CUE.search(before):
        return m.group(0)  # v1.2.3.4, version 10.0.0.1, Chrome 120.0.0.1
    return "[IP_ADDRESS]"


def _ipv6_sub(m: re.Match[str]) -> str:
    text = m.group(0)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return text
    groups = [g for g in text.replace(".", ":").split(":") if g]
    if len(groups) >= 3 or any(len(g) >= 3 for g in groups):
        return "[IP_ADDRESS]"
    return text  # a::b, ::1, 10::20


# phone numbers: a run of digit groups, cut into numbers that have a plausible shape
_PSEP = f"[{_SPACES}./-]"
_PHONE = re.compile(
    rf"(?:[+\uff0b][{_SPACES}]?|(?<![0-9{_FW_DIGITS}]))\(?{_D}{{1,15}}\)?"
    rf"(?:(?:{_PSEP}|[{_SPACES}]?-[{_SPACES}]?|\)[{_SPACES}]?|[{_SPACES}]?\()\(?{_D}{{1,12}}\)?){{0,7}}"
    rf"(?:[{_SPACES}]?,?[{_SPACES}]?(?:[xX]|[eE]xt\.?|EXT\.?|[eE]xtn\.?|[eE]xtension|[pP]oste|"
    rf"[dD]urchwahl|DW)[{_SPACES}]?\.?[{_SPACES}]?({_D}{{1,6}}))?(?!{_D})")
_PHONE_CAND = rf"{_D}(?:[{_SPACES}./()+-]{{0,3}}{_D}){{6,}}"
_GROUP = re.compile(r"[0-9]+")


def _digit_runs(text: str) -> list[tuple[int, int]]:
    return [(g.start(), g.end()) for g in _GROUP.finditer(text)]


def _is_list(groups: list[str]) -> bool:
    """01 02 03 04 05, 10 20 30 40: an arithmetic sequence of equal-length groups."""
    if len(groups) < 4 or len({len(g) for g in groups}) != 1:
        return False
    vals = [int(g) for g in groups]
    steps = {b - a for a, b in zip(vals, vals[1:], strict=False)}
    return len(steps) == 1


def _phone_ok(groups: list[str], seps: list[str], ctx: str, plus: bool) -> bool:
    """Are the digit groups ``groups`` with separators ``seps`` (``ctx``: the text before) one
    phone number?"""
    digits = "".join(groups)
    n = len(digits)
    lens = [len(g) for g in groups]
    bare = len(groups) == 1
    seps_set = {s.strip() or " " for s in seps}
    strong_cue = _PHONE_CUE.search(ctx) is not None
    id_ctx = _ID_CUE.search(ctx[-20:]) is not None and not re.search(
        r"(?i)phone|\btel|mobile|\bcell|whats|\bcall|\bfax|\bsms", ctx)
    if n < 7:
        return False
    if plus:  # +CC ...
        return 8 <= n <= 15 and (digits[0] != "1" or n == 11)
    if _is_list(groups):
        return False
    if n >= 3 and digits.startswith("00") and digits[2] != "0":  # 00 international prefix
        m = n - 2
        ok = 8 <= m <= 15 and (digits[2] != "1" or m == 11)
        return ok and (not bare or strong_cue) and not id_ctx
    date_like = (len(groups) >= 3 and lens[0] <= 2 and lens[1] <= 2 and lens[2] in (2, 4)
                 and seps[0] == seps[1] and seps[0].strip() in ("-", ".", "/")
                 and not (len(groups) == 5 and set(lens) == {2}))
    slashes = [k for k, sp in enumerate(seps) if "/" in sp]
    if date_like or (slashes and slashes != [0]):
        return False  # 01-02-2024 10, 01.02.2024; "/" only right after the area code
    if "." in seps_set and seps_set != {"."}:
        return False
    if digits[0] == "0" and digits[1] != "0":  # national, trunk prefix 0
        if not 9 <= n <= 12:
            return False
        if seps_set == {"."}:
            return set(lens) == {2} or lens in ([3, 3, 4], [2, 4, 4], [3, 4, 4], [4, 3, 4])
        return not (bare and id_ctx)
    if bare:  # a bare run: only next to a phone cue (order numbers, ids, timestamps otherwise)
        return strong_cue and not id_ctx and 8 <= n <= 15
    if id_ctx:
        return False
    if seps_set == {"."}:
        return lens in ([3, 3, 4], [1, 3, 3, 4])
    if lens in ([3, 3, 4], [1, 3, 3, 4]) and (lens[0] == 3 or digits[0] == "1"):
        area = groups[0] if lens[0] == 3 else groups[1]
        return area[0] in "23456789"  # North America (also Italian mobiles 3xx xxx xxxx)
    if n == 9 and digits[0] in "6789" and max(lens) <= 3 and len(groups) >= 3:
        return True  # Spain: 612 34 56 78, 912 345 678
    if lens == [5, 5] and digits[0] in "6789":
        return True  # India: 98765 43210
    if n in (10, 11) and lens[0] == 2 and lens[-1] == 4 and seps and seps[-1].strip() == "-":
        return True  # Brazil: (11) 91234-5678, 11 3456-7890
    if lens in ([3, 7], [3, 6]) and digits[0] == "3":
        return True  # Italy: 347 1234567
    return strong_cue and 8 <= n <= 15


def _phone_sub(m: re.Match[str]) -> str:
    """Cut the run into phone numbers: from the left, the longest run of groups that is one."""
    full = m.group(0)
    body_end = len(full)
    if m.group(1) is not None:  # the extension's label starts after the last digit / ")"
        body_end = m.start(1) - m.start()
        while body_end > 0 and not full[body_end - 1].isdigit() and full[body_end - 1] != ")":
            body_end -= 1
    body = _ascii_digits(full[:body_end])
    runs = _digit_runs(body)
    out: list[str] = []
    pos = 0  # next character of ``full`` not yet written
    i = 0
    replaced_last = False
    while i < len(runs):
        lo = runs[i - 1][1] if i else 0
        s = runs[i][0]
        lead = s
        while lead > lo and body[lead - 1] in "(+ ":
            lead -= 1
        while lead < s and body[lead] == " ":
            lead += 1
        plus = "+" in body[lead:s]
        ctx = m.string[max(0, m.start() + lead - 32):m.start() + lead]
        best = None
        for j in range(min(len(runs), i + 8) - 1, i - 1, -1):
            e = runs[j][1]
            seps = [body[runs[k][1]:runs[k + 1][0]] for k in range(i, j)]
            if any(len(sp.strip(" ()")) > 1 for sp in seps):
                continue
            tail = e
            if body[e:e + 1] == ")" and body[lead:e].count("(") > body[lead:e].count(")"):
                tail += 1
            groups = [body[a:b] for a, b in runs[i:j + 1]]
            if _phone_ok(groups, seps, ctx, plus):
                best = (tail, j)
                break
        if best is None:
            i += 1
            continue
        tail, j = best
        out.append(full[pos:lead])
        out.append("[PHONE]")
        pos = tail
        replaced_last = j == len(runs) - 1
        i = j + 1
    if not out:
        return full
    if replaced_last and m.group(1) is not None:
        pos = len(full)  # the extension goes with the number: x769, ext. 12
    out.append(full[pos:])
    return "".join(out)


# self-disclosure cues: "my name is X", "I live at 12 Rue ..."
_UPPER = "A-Z\u00c0-\u00d6\u00d8-\u00de"
_LETTER = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f'\u2019-"
_NAME_WORD = f"[{_UPPER}][{_LETTER}]+"
_PERSON = (
    r"\b((?i:my (?:full |real |first |last )?name is|my name's|i am called|i'm called"
    "|i\u2019m called|je m'appelle|je m\u2019appelle|ich hei\u00dfe|ich heisse"
    "|me llamo|mi chiamo|mijn naam is|meu nome \u00e9)[ \t]+)"
    f"{_NAME_WORD}(?:[ \t]+(?:(?:van|von|de|da|del|della|di|du|le|la|bin|al|el|ter|den|der|dos|das)"
    f"[ \t]+)*{_NAME_WORD}){{0,3}}"
)
_ADDRESS = (
    r"\b((?i:i live at|i live on|i'm at|i am at|my (?:home |postal |mailing |shipping |billing "
    r"|street |new |current )?address is|my address:|ship (?:it |this |them )?to|deliver "
    r"(?:it |this |them )?to|send (?:it |this |them )?to|j'habite au|j'habite|ich wohne in"
    r"|vivo en)[ \t]*:?[ \t]+)"
    "(?:[0-9]{1,5}[A-Za-z]?,?[ \t]+[^\n.;!?()]{3,80}"
    f"|[{_UPPER}][^\n.;!?()0-9]{{2,60}}[0-9]{{1,5}}[^\n.;!?()]{{0,60}})"
)

PII_TYPES: tuple[str, ...] = (
    "SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "SSN", "IP_ADDRESS", "PHONE", "PERSON", "ADDRESS",
)


def placeholder(pii_type: str) -> str:
    return f"[{pii_type}]"


# ---- checksum rules (shared by both paths) ---------------------------------------------------

_IBAN_LENGTHS = {  # ISO 13616 registry lengths of common countries; others: 15-34
    "AD": 24, "AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18,
    "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18,
    "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "BR": 29, "SA": 24,
    "TR": 26, "AE": 23, "IL": 23, "MC": 27, "LI": 21, "EE": 20, "LT": 20, "LV": 21, "BG": 22,
    "CY": 28, "MT": 31, "IS": 26,
}
_IBAN_SEPS = str.maketrans("", "", " \u00a0\u202f\u2009-")


def iban_valid(candidate: str) -> bool:
    """ISO 13616 check: length for the country and the mod-97 remainder 1 (any case; spaces,
    NBSPs and dashes between the groups)."""
    s = candidate.translate(_IBAN_SEPS).upper()
    if not (15 <= len(s) <= 34) or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    want = _IBAN_LENGTHS.get(s[:2])
    if want is not None and len(s) != want:
        return False
    if not s.isascii() or not s.isalnum():
        return False
    rearranged = s[4:] + s[:4]
    digits = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(digits) % 97 == 1


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _gtin_valid(digits: str) -> bool:
    """EAN-13 / UPC-A check digit (weights 3 and 1 from the right)."""
    total = sum((3 if i % 2 else 1) * (ord(c) - 48) for i, c in enumerate(reversed(digits)))
    return total % 10 == 0


def _issuer_ok(d: str) -> bool:
    """The issuer (IIN) ranges of the card networks, with their lengths."""
    n = len(d)
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p2 in (34, 37):
        return n == 15  # American Express
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19  # Diners Club
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if p4 in (1800, 2131):
        return n == 15  # JCB (old 15-digit)
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or p2 == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if 2200 <= p4 <= 2204:
        return 16 <= n <= 19  # Mir
    if p2 in (50, 56, 57, 58, 63, 67) or p4 in (6304, 6759, 6761, 6762, 6763):
        return 12 <= n <= 19  # Maestro
    return False


def card_valid(digits: str) -> bool:
    """12-19 digits in an issuer range with that network's lengths, and a valid Luhn check digit.
    A 13- or 12-digit run that is a valid EAN-13 / UPC-A barcode is taken for the barcode."""
    if not 12 <= len(digits) <= 19 or not digits.isdigit() or not _issuer_ok(digits):
        return False
    if len(digits) in (12, 13) and _gtin_valid(digits):
        return False
    return luhn_valid(digits)


def _iban_sub(m: re.Match[str]) -> str:
    text = m.group(0)
    # the longest prefix ending on a letter or digit that validates (the regex may have taken
    # trailing capitals or digits of the next word)
    if not text[:2].isupper() and m.start() > 0 and m.string[m.start() - 1].isalnum():
        return text  # a lowercase candidate inside a longer token (hex ids, UUIDs)
    for end in range(len(text), 14, -1):
        head = text[:end]
        if "-" in head and any(len(g) != 4 for g in head.split("-")[:-1]):
            continue  # dashes between groups of four only (not a UUID)
        if text[end - 1].isalnum() and iban_valid(head):
            return "[IBAN]" + text[end:]
    return text


_CARD_SPLIT = re.compile(f"({_CARD_SEP})")
_CARD_GROUPINGS = ([4, 4, 4, 4], [4, 4, 4, 4, 3], [4, 4, 4, 4, 1], [4, 4, 4, 4, 2], [4, 6, 5],
                   [4, 6, 4], [4, 4, 4, 3], [4, 4, 4, 1], [4, 4, 4, 2], [4, 4, 4], [4, 4, 5],
                   [4, 4, 4, 4, 4], [6, 13])


def _card_sub(m: re.Match[str]) -> str:
    text = m.group(0)
    if m.start() > 0 and m.string[m.start() - 1] in "+\uff0b":
        return text  # "+4915112345678": an international phone number, not a card
    if m.start() >= 2 and m.string[m.start() - 1] == "-" and m.string[m.start() - 2].isdigit():
        return text  # ORD-2423-4921565311564926: the tail of a dashed reference
    parts = _CARD_SPLIT.split(_ascii_digits(text))  # digits, sep, digits, sep, ...
    digit_groups, seps = parts[0::2], parts[1::2]
    n = len(digit_groups)
    # the longest, then leftmost window of whole groups that is a valid card number, written as
    # one run or in a card's usual grouping; a window joined by dashes to more digits is a part
    # of a longer reference (ORD-4111-1111-1111-1111-22), not a card
    for width in range(n, 0, -1):
        for start in range(0, n - width + 1):
            window = digit_groups[start:start + width]
            if width > 1 and [len(g) for g in window] not in _CARD_GROUPINGS:
                continue
            if (start > 0 and seps[start - 1] == "-") or (
                    start + width < n and seps[start + width - 1] == "-"):
                continue
            if start > 0 and len(digit_groups[start - 1]) == 4:
                continue  # the tail of a longer grouped number (1234 5678 9012 3456)
            if width < n and sum(len(g) for g in window) == 12:
                continue  # 12 digits (Maestro) only as the whole number
            if card_valid("".join(window)):
                # positions in the original text (the ASCII copy has the same length)
                a = sum(len(g) + len(s) for g, s in zip(digit_groups[:start], seps[:start],
                                                        strict=True))
                b = a + sum(len(g) for g in window) + sum(len(s) for s in
                                                         seps[start:start + width - 1])
                return text[:a] + "[CREDIT_CARD]" + text[b:]
    return text


# ---- the rule table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    pii_type: str
    compiled: re.Pattern[str]  # the Python rule
    py_repl: str | Callable[[re.Match[str]], str]
    pl_repl: str | None  # the Polars replacement; None: a Python rule run on candidate texts
    cand: str | None = None  # Python rules: a superset of the texts they change (Rust / RE2)

    @property
    def pattern(self) -> str:
        """The pattern that selects the texts the rule may change (all three engines)."""
        return self.cand if self.cand is not None else self.compiled.pattern

    @property
    def rust(self) -> str:
        return _rust(self.pattern)


def _rust(pattern: str) -> str:
    """The Polars (Rust regex) spelling of a pattern: ASCII word boundaries, as Python's
    ``re.ASCII`` reads ``\\b``. (A Unicode ``\\b`` also stops Rust's fast DFA on non-ASCII text.)"""
    return pattern.replace(r"\b", r"(?-u:\b)")


def _both(pii_type: str, pattern: str, py_repl: str, pl_repl: str) -> _Rule:
    """A rule both engines run (patterns without look-around or back-references)."""
    return _Rule(pii_type, re.compile(pattern, re.ASCII), py_repl, pl_repl)


def _py(pii_type: str, compiled: re.Pattern[str], fn: Callable[[re.Match[str]], str],
        cand: str) -> _Rule:
    return _Rule(pii_type, compiled, fn, None, cand)


_RULES: list[_Rule] = (
    [_both("SECRET", p, py, plr) for p, py, plr in _SECRET_PATTERNS]
    + [
        _py("SECRET", _KV_SECRET, _kv_secret_sub, _KV_CAND),
        _py("SECRET", _SAID_SECRET, _said_secret_sub, _SAID_CAND),
        _py("EMAIL", _EMAIL, _email_sub, _EMAIL_CAND),
        _py("IBAN", _IBAN, _iban_sub, _IBAN_CAND),
        _py("CREDIT_CARD", _CARD, _card_sub, _CARD_CAND),
        _py("SSN", _SSN, _ssn_sub, _SSN_CAND),
        _py("IP_ADDRESS", _IPV6, _ipv6_sub, _IPV6_CAND),
        _py("IP_ADDRESS", _IPV4, _ipv4_sub, _IPV4_CAND),
        _py("PHONE", _PHONE, _phone_sub, _PHONE_CAND),
        _both("PERSON", _PERSON, r"\1[PERSON]", "${1}[PERSON]"),
        _both("ADDRESS", _ADDRESS, r"\1[ADDRESS]", "${1}[ADDRESS]"),
    ]
)
# one union pattern: a row that does not match it cannot contain anything any rule replaces
_ANY = "|".join(f"(?:{r.rust})" for r in _RULES)
# the rules grouped by PII type (consecutive in _RULES), with each group's union pattern
_GROUPS: list[tuple[str, list[_Rule], str]] = []
for _r in _RULES:
    if _GROUPS and _GROUPS[-1][0] == _r.pii_type:
        _GROUPS[-1][1].append(_r)
    else:
        _GROUPS.append((_r.pii_type, [_r], ""))
_GROUPS = [(t, rs, "|".join(f"(?:{r.rust})" for r in rs)) for t, rs, _ in _GROUPS]
del _r


# ---- single strings ---------------------------------------------------------------------------


# Python side of the prefilter: per rule, its selecting pattern (a text it cannot match is left
# alone by the rule), and the union of all of them
_PY_CAND: dict[int, re.Pattern[str]] = {id(r): re.compile(r.pattern, re.ASCII) for r in _RULES}
_PY_ANY = re.compile("|".join(
    f"(?i:{r.pattern[4:]})" if r.pattern.startswith("(?i)") else f"(?:{r.pattern})"
    for r in _RULES), re.ASCII)


def scrub_text(s: str | None) -> tuple[str | None, list[str]]:
    """Scrub one string; return (scrubbed text, PII types replaced, in ``PII_TYPES`` order)."""
    if s is None:
        return None, []
    if not _PY_ANY.search(s):
        return s, []
    found: set[str] = set()
    for rule in _RULES:
        if rule.pl_repl is None and not _PY_CAND[id(rule)].search(s):
            continue
        new = rule.compiled.sub(rule.py_repl, s)
        if new != s:
            found.add(rule.pii_type)
            s = new
    return s, [t for t in PII_TYPES if t in found]


def find_pii(s: str | None) -> list[tuple[str, str]]:
    """PII still present in ``s`` (placeholders are not PII): a list of (type, matched text).

    Checksum types report only candidates that validate. The asset check on scrubbed output runs
    this and fails if the list is not empty."""
    if not s:
        return []
    out: list[tuple[str, str]] = []
    for rule in _RULES:  # in scrub order, each rule on the text the earlier rules left
        for m in rule.compiled.finditer(s):
            if rule.pl_repl is None:
                replaced = rule.py_repl(m)  # type: ignore[operator]
                if replaced == m.group(0):
                    continue
            out.append((rule.pii_type, m.group(0)))
        s = rule.compiled.sub(rule.py_repl, s)
    return out


# ---- vectorized -------------------------------------------------------------------------------


def _scatter(base: pl.Series, idx: pl.Series, values: pl.Series) -> pl.Series:
    out = base.clone()
    if idx.len():
        out.scatter(idx, values)
    return out


def _scrub_series(s: pl.Series) -> tuple[pl.Series, dict[str, pl.Series]]:
    """Scrub one String series; return it and, per PII type found, a Boolean 'replaced here'.

    Rows that cannot match (the union prefilter) are left alone; the candidate rows are scrubbed
    once per distinct value (chat logs repeat the same texts: system prompts, earlier turns)."""
    cand = s.str.contains(_ANY).fill_null(False)
    idx = cand.arg_true()
    if idx.len() == 0:
        return s, {}
    sub_all = s.gather(idx)
    distinct = sub_all.unique(maintain_order=True)
    sub = distinct
    sub_flags: dict[str, pl.Series] = {}
    for pii_type, rules, union in _GROUPS:
        # one scan per type over the current texts; the type's rules then run on the hit rows
        # only (a row no rule of the type matches is left unchanged by all of them)
        hit_idx = sub.str.contains(union).fill_null(False).arg_true()
        if hit_idx.len() == 0:
            continue
        part = sub.gather(hit_idx)
        before = part
        for rule in rules:
            if rule.pl_repl is not None:
                part = part.str.replace_all(rule.rust, rule.pl_repl)
            else:
                fn, repl = rule.compiled.sub, rule.py_repl
                part = pl.Series([fn(repl, v) for v in part.to_list()], dtype=pl.String)
        changed_part = (part != before).fill_null(False)
        if changed_part.any():
            changed = _scatter(pl.Series([False] * sub.len(), dtype=pl.Boolean), hit_idx,
                               changed_part)
            prev = sub_flags.get(pii_type)
            sub_flags[pii_type] = changed if prev is None else (prev | changed)
            sub = _scatter(sub, hit_idx, part)
    if sub.len() != sub_all.len():  # back from distinct values to the candidate rows
        pos = pl.DataFrame({"v": sub_all}).join(
            pl.DataFrame({"v": distinct}).with_row_index("k"),
            on="v", how="left", maintain_order="left", nulls_equal=True)["k"]
        sub = sub.gather(pos)
        sub_flags = {t: f.gather(pos) for t, f in sub_flags.items()}
    out = _scatter(s, idx, sub)
    n = s.len()
    flags = {t: _scatter(pl.Series(values=[False], dtype=pl.Boolean).extend_constant(False, n - 1)
                         if n else pl.Series([], dtype=pl.Boolean), idx, f)
             for t, f in sub_flags.items()}
    return out, flags


def _types_column(flags: dict[str, pl.Series], n: int) -> pl.Series:
    if not flags:
        return pl.Series("pii_types", [[]] * n, dtype=pl.List(pl.String))
    frame = pl.DataFrame({t: flags[t] for t in PII_TYPES if t in flags})
    exprs = [pl.when(pl.col(t)).then(pl.lit(t)).otherwise(pl.lit(None, pl.String))
             for t in frame.columns]
    return frame.select(pl.concat_list(exprs).list.drop_nulls().alias("pii_types")).to_series()


def scrub_series(s: pl.Series) -> tuple[pl.Series, pl.Series]:
    """Scrub a String series; return (scrubbed, List[String] of PII types replaced per row)."""
    out, flags = _scrub_series(s.cast(pl.String))
    return out.alias(s.name), _types_column(flags, s.len())


def scrub_frame(df: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, pl.Series]:
    """Scrub ``columns`` of ``df`` (String or List[String] columns).

    Returns the frame with those columns scrubbed and a ``pii_types`` List[String] series: per row,
    the PII types replaced in any of the columns, in ``PII_TYPES`` order."""
    n = df.height
    flags: dict[str, pl.Series] = {}

    def add(t: str, f: pl.Series) -> None:
        flags[t] = f if t not in flags else (flags[t] | f)

    replaced: list[pl.Series] = []
    for col in columns:
        series = df.get_column(col)
        if series.dtype == pl.List(pl.String):
            # scrub the flattened values, then put them back into the same list offsets
            arr = series.to_arrow()
            arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
            arr = arr.cast(pa.large_list(pa.large_string()))
            values = pl.Series(arr.flatten())
            scrubbed, fl = _scrub_series(values)
            if not fl:
                replaced.append(series)
                continue
            # rows of the flattened values: list i owns values offsets[i] .. offsets[i+1]
            lengths = series.list.len().fill_null(0)
            row_of = pl.int_range(0, n, dtype=pl.UInt32, eager=True).repeat_by(
                lengths).explode().drop_nulls()
            offsets = pl.concat([pl.Series([0], dtype=pl.Int64),
                                 lengths.cast(pl.Int64).cum_sum()]).to_arrow()
            rebuilt = pl.from_arrow(pa.LargeListArray.from_arrays(
                offsets, scrubbed.to_arrow().cast(pa.large_string()),
                mask=pa.array(series.is_null().to_list()) if series.null_count() else None))
            replaced.append(rebuilt.alias(col).cast(series.dtype))
            for t, f in fl.items():
                rows = row_of.filter(f).unique()
                flag = pl.Series([False] * n, dtype=pl.Boolean)
                if rows.len():
                    flag.scatter(rows, True)
                add(t, flag)
        else:
            scrubbed, fl = _scrub_series(series.cast(pl.String))
            replaced.append(scrubbed.alias(col))
            for t, f in fl.items():
                add(t, f)
    out = df.with_columns(replaced) if replaced else df
    return out, _types_column(flags, n)


# ---- a text cut short -------------------------------------------------------------------------
# A line written only in part (a quarantined raw line whose write was cut short) can end inside a
# card number, where the card rule (a whole number: issuer length and Luhn) no longer sees a card
# and the cut-off digits stay readable. Such a tail is masked when it reads as the start of a
# card: more digits than an issuer number (the first six, which PCI DSS lets be shown), at most
# 18, a grouping that a card's usual grouping starts with, and an issuer range that allows a card
# longer than the digits seen. Only texts known to be cut are read this way (``scrub_cut_tail``).

_CUT_CARD = re.compile(
    rf"(?<!{_D})(?<!{_D}{_CARD_SEP})({_D}(?:{_CARD_SEP}?{_D}){{6,17}}){_CARD_SEP}?\Z")
_CUT_CARD_CAND = rf"{_D}{_CARD_SEP}?$"  # a text that ends in a digit (Rust: ``$`` = its end)


def _card_start(digits: str) -> bool:
    """Could ``digits`` (7-18 ASCII digits) be the first digits of a card number?"""
    return any(_issuer_ok(digits + "0" * (n - len(digits)))
               for n in range(max(12, len(digits) + 1), 20))


def _card_grouping_start(lengths: list[int]) -> bool:
    """Could groups of these lengths (the last one cut) start a card's usual grouping?"""
    *whole, last = lengths
    k = len(lengths)
    return k == 1 or any(len(g) >= k and g[:k - 1] == whole and last <= g[k - 1]
                         for g in _CARD_GROUPINGS)


def _cut_card_sub(m: re.Match[str]) -> str:
    groups = _CARD_SPLIT.split(_ascii_digits(m.group(1)))[0::2]
    if _card_grouping_start([len(g) for g in groups]) and _card_start("".join(groups)):
        return "[CREDIT_CARD]"
    return m.group(0)


def scrub_cut_text(s: str | None) -> str | None:
    """``s``, a text known to be cut short, with a card number's cut-off start at its end masked
    (``[CREDIT_CARD]``); run after the scrubber's own rules."""
    return s if s is None else _CUT_CARD.sub(_cut_card_sub, s, count=1)


def scrub_cut_tail(s: pl.Series) -> pl.Series:
    """``scrub_cut_text`` over a String series (the Python rule on the rows ending in a digit)."""
    idx = s.str.contains(_CUT_CARD_CAND).fill_null(False).arg_true()
    if idx.len() == 0:
        return s
    return _scatter(s, idx, pl.Series([scrub_cut_text(v) for v in s.gather(idx).to_list()],
                                      dtype=pl.String))


# ---- JSON values ------------------------------------------------------------------------------


def scrub_json_value(value: object, found: set[str]) -> object:
    """Scrub every string of a decoded JSON value (object keys too); a number whose digits are PII
    (a card number written as a JSON integer, ...) becomes its scrubbed text. Adds the PII types
    replaced to ``found``."""
    if isinstance(value, str):
        out, types = scrub_text(value)
        found.update(types)
        return out
    if isinstance(value, dict):
        return {scrub_json_value(k, found): scrub_json_value(v, found) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_json_value(v, found) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out, types = scrub_text(str(value))
        if types:
            found.update(types)
            return out
    return value


_JSON_ESCAPE = r'\\(?:u[0-9A-Fa-f]{4}|["\\/bfnrt])'


def json_text_candidates(s: pl.Series) -> pl.Series:
    """Boolean per JSON text of ``s``: could a string or number inside hold PII? JSON escapes are
    read as a space first (every escaped character is a non-word character, so the word
    boundaries are those of the decoded strings): a superset of the texts ``scrub_json_value``
    changes, used to pick the few rows worth decoding."""
    return s.str.replace_all(_JSON_ESCAPE, " ").str.contains(_ANY).fill_null(False)


# ---- detection in a DuckDB table (the asset check) --------------------------------------------


def _re2(pattern: str) -> str:
    """A rule pattern for DuckDB's RE2: an inline ``(?i)`` prefix becomes a scoped group (RE2's
    ``\\b`` is ASCII, as Python's ``re.ASCII`` reads it)."""
    return f"(?i:{pattern[4:]})" if pattern.startswith("(?i)") else pattern


RE2_ANY = "|".join(f"(?:{_re2(r.pattern)})" for r in _RULES)

# What the residual check hands to the independent detector: every value with an ``@`` (or
# ``%40``), six digits within a short stretch, a dotted quad, an IPv6-like ``::`` or ``hex:hex``, a 24+ character
# token, or a private-key header. Built from what PII looks like, not from ``ml.pii``'s rules.
RESIDUAL_PREFILTER = (
    "@|%40|\uff20|[0-9\uff10-\uff19](?:[^0-9\uff10-\uff19]{0,3}[0-9\uff10-\uff19]){5,}"
    "|[0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}"
    "|[0-9A-Fa-f]:[0-9A-Fa-f]*:|[A-Za-z0-9+/_=-]{24,}|PRIVATE KEY"
)
RESIDUAL_MAX_VALUES = 20_000  # distinct candidate values per column handed to Presidio


def residual_pii_in_table(con, table: str, where: str = "true", params: list | None = None,
                          skip: tuple[str, ...] = (), columns: tuple[str, ...] | None = None,
                          max_values: int = RESIDUAL_MAX_VALUES) -> list[dict]:
    """PII left in the rows of DuckDB ``table`` matching ``where``: the VARCHAR and VARCHAR[]
    ``columns`` (default: every one) except ``skip``, judged by a detector independent of the
    scrubber. A named column the table lacks, or one that is not text, is an error (a check
    that silently reads nothing cannot fail).

    DuckDB (RE2) picks the distinct values matching ``RESIDUAL_PREFILTER``; Presidio's pattern
    recognizers (``ml.pii_presidio``: ``phonenumbers``, its own checksums and regexes, plus an
    entropy test for credentials) decide. Placeholders (``[EMAIL]``, ...) match nothing. A column
    with more than ``max_values`` distinct candidate values is checked on a seeded random sample
    of that many. Returns ``[{column, pii_type, values}]``: per column and type, the number of
    values holding it."""
    from ml.pii_presidio import presidio_findings

    cols = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
        "ORDER BY ordinal_position", [table]).fetchall()
    if not cols:
        raise ValueError(f"residual_pii_in_table: no table {table!r} in the warehouse")
    if columns is not None:
        text = {n for n, t in cols if t in ("VARCHAR", "VARCHAR[]")}
        wrong = [c for c in columns if c not in text]
        if wrong:
            raise ValueError(f"residual_pii_in_table: {table!r} has no text columns {wrong}")
    out: list[dict] = []
    for name, typ in cols:
        if name in skip or typ not in ("VARCHAR", "VARCHAR[]"):
            continue
        if columns is not None and name not in columns:
            continue
        value = f'"{name}"' if typ == "VARCHAR" else f'unnest("{name}")'
        rows = con.execute(
            f"SELECT v, count(*) FROM (SELECT {value} AS v FROM \"{table}\" WHERE {where}) "
            f"WHERE regexp_matches(v, ?) GROUP BY v ORDER BY hash(v) LIMIT ?",
            [*(params or []), RESIDUAL_PREFILTER, max_values]).fetchall()
        counts: dict[str, int] = {}
        for v, n in rows:
            for t in {t for t, _ in presidio_findings(v)}:
                counts[t] = counts.get(t, 0) + n
        out.extend({"column": name, "pii_type": t, "values": counts[t]}
                   for t in PII_TYPES if t in counts)
    return out
