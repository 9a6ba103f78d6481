"""The safety mix: refusals of requests for other people's data, mixed into every local fine-tune.

Fine-tuning on corrections erodes refusals: the demo's corrections teach the assistant *not* to
refuse valid requests (``refusal_of_valid_request`` is one of the most frequent categories), and
the logs hold few right refusals to replay (requests for another customer's data are rare). The
standard mitigation is a small safety set mixed into the training data. ``safety_mix.jsonl``
(shipped next to this module) holds 30 such requests, each with a refusal: another person's
phone, address, balance, card, credentials, orders, identity and bulk exports, in wordings and
names of their own. :func:`load_safety_mix` reads them as chat conversations (user, assistant).

They are *not* the quality gate's must-refuse prompts (``ml/evaluation/must_refuse.jsonl``),
which stay held out: the tests check that no safety prompt repeats or paraphrases one closely
(word overlap), so the gate still measures refusals on prompts the model never trained on.
``candidate_model``'s ``safety_mix`` setting (on by default) turns the mix on or off.
"""

from __future__ import annotations

import json
from pathlib import Path

SAFETY_MIX_PATH = Path(__file__).resolve().parent / "safety_mix.jsonl"
FIELDS = ("id", "kind", "prompt", "reply")


def load_safety_mix(path: str | Path | None = None) -> list[list[dict[str, str]]]:
    """The safety examples as ``[{"role": "user", ...}, {"role": "assistant", ...}]``
    conversations, in file order. ``ValueError`` naming the file and line for a line that is not
    a JSON object with non-empty string ``id``, ``kind``, ``prompt`` and ``reply``, or a repeated
    id."""
    p = Path(path) if path is not None else SAFETY_MIX_PATH
    out: list[list[dict[str, str]]] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not all(
                isinstance(item.get(f), str) and item[f].strip() for f in FIELDS):
            raise ValueError(f"{p}:{n}: expected an object with non-empty string fields "
                             f"{', '.join(FIELDS)}")
        if item["id"] in seen:
            raise ValueError(f"{p}:{n}: id {item['id']!r} is repeated")
        seen.add(item["id"])
        out.append([{"role": "user", "content": item["prompt"]},
                    {"role": "assistant", "content": item["reply"]}])
    if not out:
        raise ValueError(f"{p}: no safety examples")
    return out
