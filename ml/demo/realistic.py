"""The *realistic* benchmark profile: interaction logs shaped like a real assistant's, not like the
demo's support dialogues.

``ml.demo.generate`` writes support conversations from templates: short replies (about 100
characters) that repeat across millions of records, so every cache and de-duplication in the chain
looks better than it will on real logs. Real chat logs are long, unique and messy. This profile
gives every record:

* the reply a real assistant gave to the record's question (a real question/answer pair of the
  corpus), made unique: two sentences of other real replies put in, numbers and names varied,
  sometimes laid out as a numbered or bulleted list or with a code block: LLM length (median
  about 500 characters, a long tail past 2,000), and no two replies the same;
* a multi-turn history (1 to 8 turns; every earlier turn's question and reply in ``messages``);
* the real question of that pair, sometimes with an added sentence of context;
* feedback, ratings, handoffs to humans and human corrections at rates seen in production chat
  (a few percent each, most turns without any), several tenants and channels, a little PII.

The sentence pools come from the public samples in ``shared/data`` when a corpus folder is given
(oasst1 assistant and prompter messages, HH-RLHF transcripts; :func:`load_corpus`), else from a
built-in grammar (:func:`builtin_corpus`) that combines about 40,000 distinct sentences. Either
way the output is a deterministic function of ``(n, seed, corpus)``.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
TENANTS = ("acme-retail", "globex-bank", "initech-saas", "umbrella-health", "hooli-travel")
CHANNELS = ("web", "mobile", "api", "slack", "email")
FIRST_NAMES = ("Maria", "James", "Aisha", "Chen", "Olga", "Diego", "Priya", "Tom", "Fatima",
               "Lukas", "Yuki", "Ana", "Kwame", "Sofia", "Ivan", "Leila")
LAST_NAMES = ("Garcia", "Smith", "Khan", "Wang", "Petrova", "Lopez", "Patel", "Brown", "Ali",
              "Muller", "Tanaka", "Silva", "Mensah", "Rossi", "Novak", "Haddad")


@dataclass(frozen=True)
class Corpus:
    """Sentence pools: ``reply`` sentences (assistant text) and ``questions`` (user prompts)."""

    reply: tuple[str, ...]
    questions: tuple[str, ...]
    source: str
    # (question, its real reply's sentences): a record answers its question, as a real bot does
    pairs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if len(self.reply) < 50 or len(self.questions) < 20:
            raise ValueError(f"corpus {self.source!r} is too small: {len(self.reply)} reply "
                             f"sentences and {len(self.questions)} questions (need 50 and 20)")


def _sentences(text: str) -> list[str]:
    out = []
    for part in _SENTENCE.split(text.replace("\r", " ")):
        s = " ".join(part.split())
        if 20 <= len(s) <= 400:
            out.append(s)
    return out


def load_corpus(folder: Path | str) -> Corpus:
    """Sentence pools from the public samples in ``folder`` (``oasst1-en100/en_100_tree.jsonl``
    and ``hh-rlhf-helpful-base/test.jsonl.gz``; at least one must exist)."""
    folder = Path(folder)
    reply: list[str] = []
    questions: list[str] = []
    pairs: list[tuple[str, tuple[str, ...]]] = []
    oasst = folder / "oasst1-en100" / "en_100_tree.jsonl"
    hh = folder / "hh-rlhf-helpful-base" / "test.jsonl.gz"
    if not oasst.exists() and not hh.exists():
        raise FileNotFoundError(f"no public sample under {folder}: expected {oasst} or {hh}")
    if oasst.exists():
        def walk(node: dict, asked: str | None = None) -> None:
            text = (node.get("text") or "").strip()
            if node.get("role") == "assistant":
                sents = _sentences(text)
                reply.extend(sents)
                if asked and sents:
                    pairs.append((asked, tuple(sents)))
                asked = None
            elif text and len(text) <= 600:
                asked = " ".join(text.split())
                questions.append(asked)
            for child in node.get("replies") or ():
                walk(child, asked)

        for line in oasst.read_text(encoding="utf-8").splitlines():
            if line.strip():
                walk(json.loads(line)["prompt"])
    if hh.exists():
        turn = re.compile(r"\n\n(Human|Assistant): ")
        with gzip.open(hh, "rt", encoding="utf-8") as fh:
            for line in fh:
                parts = turn.split(json.loads(line)["chosen"])
                asked = None
                for who, text in zip(parts[1::2], parts[2::2], strict=True):
                    text = text.strip()
                    if who == "Assistant":
                        sents = _sentences(text)
                        reply.extend(sents)
                        if asked and sents:
                            pairs.append((asked, tuple(sents)))
                        asked = None
                    elif 10 <= len(text) <= 600:
                        asked = " ".join(text.split())
                        questions.append(asked)
    return Corpus(tuple(dict.fromkeys(reply)), tuple(dict.fromkeys(questions)), str(folder),
                  tuple(pairs))


def builtin_corpus() -> Corpus:
    """Sentence pools from a small grammar (no files needed): openers x subjects x actions x
    objects x qualifiers give about 40,000 distinct reply sentences."""
    openers = ("", "In most cases, ", "Generally speaking, ", "To be clear, ", "As a rule, ",
               "If that does not work, ", "Before you start, ", "Keep in mind that ",
               "One option is that ", "Importantly, ")
    subjects = ("you", "the system", "your account", "the app", "our support team", "the server",
                "the scheduler", "the billing service", "a new configuration", "the API")
    actions = ("should check", "can update", "will need to reset", "may want to review",
               "can safely ignore", "has to re-sync", "will automatically refresh",
               "cannot change", "usually rebuilds", "must confirm")
    objects = ("the settings page", "the cache of recent requests", "the invoice for last month",
               "your password and recovery email", "the deployment logs",
               "the shipping address on file", "the permissions of the shared folder",
               "the exported CSV file", "the retry policy", "the notification preferences")
    quals = (".", " before the next billing cycle.", " within two business days.",
             " after logging out and back in.", " from the dashboard.",
             " to avoid duplicate charges.", " if the error persists.", " using the command line.",
             " so that the change takes effect.", " once the upload has finished.")
    reply = tuple(f"{o}{s} {a} {ob}{q}".strip().capitalize() if not o else f"{o}{s} {a} {ob}{q}"
                  for o in openers for s in subjects for a in actions for ob in objects
                  for q in quals[:4])
    asks = ("How do I", "Can you explain how to", "Why can't I", "What is the best way to",
            "Is it possible to", "I tried but failed to", "Help me")
    tasks = ("reset my password", "export my data to CSV", "change the billing plan",
             "connect the API to our CRM", "cancel an order that already shipped",
             "add a teammate to the workspace", "fix a timeout when uploading large files",
             "set up two-factor authentication", "get a refund for a duplicate charge",
             "schedule a report every Monday", "migrate from the old dashboard",
             "understand the difference between the plans")
    questions = tuple(f"{a} {t}?" for a in asks for t in tasks)
    return Corpus(reply, questions, "builtin")


def _vary(rng: random.Random, sentence: str) -> str:
    """Numbers and names varied so repeated sentences do not repeat exactly. Every number of a
    sentence moves by the same amount, so a range stays a range ("(1995-2019)" -> "(2032-2056)")
    and a list of years a list of years, as in real text (independent offsets made descending
    "year ranges" and Luhn-valid runs of four years that no real reply holds)."""
    roll = rng.random()
    if roll < 0.25:
        shift = rng.randrange(1, 97)
        return re.sub(r"\d+", lambda m: str(int(m.group()) + shift), sentence) \
            if any(c.isdigit() for c in sentence) else \
            f"{sentence[:-1] if sentence[-1:] in '.!?' else sentence} (step {rng.randrange(2, 40)})."
    if roll < 0.35:
        return f"{rng.choice(FIRST_NAMES)}, {sentence[0].lower()}{sentence[1:]}"
    return sentence


def _reply(rng: random.Random, corpus: Corpus, own: tuple[str, ...] = ()) -> str:
    """A reply: the real reply's sentences (``own``) with two sentences of other replies put in
    (what makes every reply unique), or, without ``own``, 2-14 sentences of the pool."""
    if own:
        sents = [_vary(rng, x) for x in own]
        for _ in range(2):
            sents.insert(rng.randrange(len(sents) + 1), _vary(rng, rng.choice(corpus.reply)))
    else:
        k = min(14, max(2, int(rng.lognormvariate(1.8, 0.5))))
        sents = [_vary(rng, rng.choice(corpus.reply)) for _ in range(k)]
    shape = rng.random()
    if shape < 0.15:  # a numbered list after an intro sentence
        return sents[0] + "\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(sents[1:], 1))
    if shape < 0.25:  # bullets
        return sents[0] + "\n" + "\n".join(f"- {s}" for s in sents[1:])
    if shape < 0.30:  # with a code block
        var = rng.choice(("config", "result", "items", "client", "rows"))
        code = (f"```python\n{var} = load('{rng.choice(TENANTS)}')\n"
                f"for x in {var}[:{rng.randrange(2, 50)}]:\n    print(x)\n```")
        return " ".join(sents[:2]) + "\n\n" + code + "\n\n" + " ".join(sents[2:])
    # paragraphs
    cut = rng.randrange(1, len(sents)) if len(sents) > 2 else len(sents)
    return " ".join(sents[:cut]) + ("\n\n" + " ".join(sents[cut:]) if sents[cut:] else "")


def _question(rng: random.Random, corpus: Corpus, q: str | None = None) -> str:
    q = q or rng.choice(corpus.questions)
    if rng.random() < 0.3:
        q = f"{_vary(rng, rng.choice(corpus.reply))} {q}"
    if rng.random() < 0.02:  # a little PII, as real users paste it
        q += (f" My email is {rng.choice(FIRST_NAMES).lower()}.{rng.randrange(10, 9999)}"
              f"@example.com.")
    return q


def iter_realistic(n: int, seed: int, *, corpus: Corpus | None = None, tenants: int = 5,
                   days: int = 1, start: str = "2026-11-01") -> Iterator[tuple[str, dict]]:
    """Exactly ``n`` (day, record) pairs, sessions of 1-8 turns with their whole history."""
    if n < 0 or days < 1 or not 1 <= tenants <= len(TENANTS):
        raise ValueError(f"iter_realistic: need n >= 0, days >= 1 and 1 <= tenants <= "
                         f"{len(TENANTS)}; got n={n}, days={days}, tenants={tenants}")
    corpus = corpus or builtin_corpus()
    rng = random.Random(seed)
    first = date.fromisoformat(start)
    emitted = 0
    while emitted < n:
        day_index = emitted * days // n
        day = (first + timedelta(days=day_index)).isoformat()
        tenant = TENANTS[rng.randrange(tenants)]
        session = f"s-{rng.getrandbits(64):016x}"
        channel = rng.choice(CHANNELS)
        turns = min(8, 1 + int(rng.expovariate(1 / 1.6)))
        history: list[dict[str, str]] = [{"role": "system", "content":
                                          f"You are the assistant of {tenant}. Be accurate."}]
        sec = rng.randrange(86_000 - 60 * turns)
        for t in range(turns):
            if emitted >= n:
                break
            asked, own = rng.choice(corpus.pairs) if corpus.pairs else (None, ())
            q = _question(rng, corpus, asked)
            reply = _reply(rng, corpus, own)
            sec += rng.randrange(5, 60)
            iid = f"{rng.getrandbits(128):032x}"
            rec: dict = {
                "interaction_id": f"{iid[:8]}-{iid[8:12]}-{iid[12:16]}-{iid[16:20]}-{iid[20:]}",
                "tenant_id": tenant, "session_id": session, "turn_index": t,
                "timestamp": f"{day}T{sec // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}Z",
                "channel": channel,
                "model": {"provider": "openai", "name": "gpt-4o-mini",
                          "version": rng.choice(("2024-07-18", "2024-11-20"))},
                "messages": history + [{"role": "user", "content": q}],
                "response": reply,
                "latency_ms": round(400 + len(reply) * 6 + rng.expovariate(1 / 500), 1),
                "tokens": {"prompt": sum(len(m["content"]) for m in history) // 4 + len(q) // 4,
                           "completion": len(reply) // 4},
                "metadata": {"language": "en", "tags": [channel]},
            }
            r = rng.random()
            if r < 0.06:
                rec["feedback"] = {"thumbs": "down"}
            elif r < 0.16:
                rec["feedback"] = {"thumbs": "up"}
            elif r < 0.19:
                rec["feedback"] = {"rating": rng.randrange(1, 6)}
            handoff = rng.random() < 0.03
            last = t == turns - 1
            rec["signals"] = {"user_continued": not last, "requested_human": handoff,
                              "abandoned": last and rng.random() < 0.1}
            if handoff and rng.random() < 0.4:
                rec["human_correction"] = {"agent_id": f"{tenant}-agent-{rng.randrange(40):02d}",
                                           "corrected_response": _reply(rng, corpus),
                                           "reason": "inaccurate", "category": "factual_error"}
            if rng.random() < 0.004:
                rec["metadata"]["note"] = f"call me at +1 415 555 {rng.randrange(1000, 9999)}"
            yield day, rec
            emitted += 1
            history = history + [{"role": "user", "content": q},
                                 {"role": "assistant", "content": reply}]
            if rec["signals"]["abandoned"]:
                break


def write_realistic(folder: Path | str, n: int, seed: int, *, corpus: Corpus | None = None,
                    tenants: int = 5, days: int = 1, start: str = "2026-11-01",
                    files_per_day: int = 4) -> list[Path]:
    """Write the profile as landing files ``<folder>/date=<day>/realistic-NN.jsonl``."""
    folder = Path(folder)
    handles: dict[tuple[str, int], object] = {}
    paths: list[Path] = []
    try:
        for i, (day, rec) in enumerate(iter_realistic(n, seed, corpus=corpus, tenants=tenants,
                                                      days=days, start=start)):
            key = (day, i % files_per_day)
            fh = handles.get(key)
            if fh is None:
                path = folder / f"date={day}" / f"realistic-{key[1]:02d}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = handles[key] = open(path, "w", encoding="utf-8")  # noqa: SIM115
                paths.append(path)
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")  # type: ignore[attr-defined]
    finally:
        for fh in handles.values():
            fh.close()  # type: ignore[attr-defined]
    return sorted(paths)
