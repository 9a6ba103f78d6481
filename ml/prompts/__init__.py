"""Versioned prompt files and their loader.

A prompt lives in ``ml/prompts/<name>/v<N>.md``: a front-matter header (``name``, ``version``,
``description``) between ``---`` lines, then a ``## system`` section and a ``## user`` section.
The user section is a template with ``{placeholders}`` filled by :meth:`Prompt.render`.
``load_prompt(name)`` returns the highest version; ``load_prompt(name, "v1")`` a given one. A
prompt's ``version`` (e.g. ``auditor-v1``) is recorded with every verdict and sample it produces,
and its ``sha`` (sha256 of the file) makes an edit without a version bump visible in metadata.
"""

from __future__ import annotations

import hashlib
import re
import string
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

PROMPTS_DIR = Path(__file__).resolve().parent
_FILE = re.compile(r"^v(\d+)\.md$")
_SECTION = re.compile(r"^## (system|user)\s*$", re.MULTILINE)


class PromptError(ValueError):
    """A prompt file is missing or malformed (names the file)."""


class Prompt(NamedTuple):
    text: str
    version: str
    sha: str
    system: str
    user: str
    path: str

    def render(self, **values: str) -> list[dict[str, str]]:
        """Chat messages: the system section and the user template filled with ``values``."""
        wanted = {f for _, f, _, _ in string.Formatter().parse(self.user) if f}
        missing = wanted - set(values)
        if missing:
            raise PromptError(f"prompt {self.version}: no value for placeholder(s) {sorted(missing)}")
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.format(**{k: values[k] for k in wanted})}]


def available_versions(name: str) -> list[str]:
    folder = PROMPTS_DIR / name
    if not folder.is_dir():
        raise PromptError(f"no prompt named {name!r} (expected folder {folder})")
    nums = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FILE.match(p.name)))
    return [f"v{n}" for n in nums]


def _parse(path: Path) -> Prompt:
    raw = path.read_text(encoding="utf-8")
    if not raw.startswith("---\n"):
        raise PromptError(f"{path}: must start with a '---' front-matter header")
    try:
        header, body = raw[4:].split("\n---\n", 1)
    except ValueError:
        raise PromptError(f"{path}: front-matter header is not closed by '---'") from None
    meta: dict[str, str] = {}
    for line in header.splitlines():
        if line.strip():
            key, sep, value = line.partition(":")
            if not sep:
                raise PromptError(f"{path}: header line {line!r} is not 'key: value'")
            meta[key.strip()] = value.strip()
    if not meta.get("version"):
        raise PromptError(f"{path}: header lacks 'version'")
    parts = _SECTION.split(body)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    for needed in ("system", "user"):
        if not sections.get(needed):
            raise PromptError(f"{path}: missing or empty '## {needed}' section")
    return Prompt(text=raw, version=meta["version"], sha=hashlib.sha256(raw.encode()).hexdigest(),
                  system=sections["system"], user=sections["user"], path=str(path))


@lru_cache(maxsize=32)
def load_prompt(name: str, version: str | None = None) -> Prompt:
    """The prompt ``name`` at ``version`` (``"v2"`` or ``"auditor-v2"``), default the newest."""
    versions = available_versions(name)
    if not versions:
        raise PromptError(f"prompt {name!r} has no v<N>.md files in {PROMPTS_DIR / name}")
    if version is None:
        version = versions[-1]
    short = version.removeprefix(f"{name}-")
    if short not in versions:
        raise PromptError(f"prompt {name!r} has no version {version!r}; available {versions}")
    return _parse(PROMPTS_DIR / name / f"{short}.md")
