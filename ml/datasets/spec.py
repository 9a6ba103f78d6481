"""What a training dataset version is built from: :class:`DatasetSpec`.

A spec is a frozen, validated value. Every check raises ``ValueError`` naming the field (e.g.
``DatasetSpec.replay_share must be in [0, 1), got 1.5``). :meth:`DatasetSpec.to_json` is its
canonical form: sorted keys, no whitespace, lists sorted where order carries no meaning, dates
as ISO strings; it is what the dataset's version hash covers, so two specs that mean the same
give the same JSON. ``DatasetSpec.from_dict(spec.to_dict()) == spec``.

Fields (defaults in brackets):

* ``name`` [``default``]: the dataset name; versions are numbered within it.
* ``filters`` (:class:`Filters`): which *new* candidates are eligible: ``date_from`` /
  ``date_to`` (inclusive days, UTC), ``quality_min`` / ``quality_max`` (a bound excludes a
  candidate without a quality), ``categories``, ``intents``, ``sources`` (exact, or a prefix
  ending in ``*`` such as ``llm:*``), ``tenants``. An empty list means no restriction.
* ``include_tags`` [none]: a candidate must carry at least one of them (when given);
  ``exclude_tags`` [``["exclude"]``]: a candidate carrying any of them is dropped.
* ``category_caps`` [{}] and ``default_cap`` [None]: at most this many new examples per category
  (the cap of a category not in ``category_caps`` is ``default_cap``; None: no cap). Where a cap
  bites, k-means diversity sampling picks which ones stay.
* ``max_category_share`` [0.5]: no category above this share of the new examples when there is
  more than one category (None: no bound).
* ``replay_share`` [0.2]: the share of the final train split that is replay; ``replay_min_quality``
  [0.8]: the least quality of a replayed historical interaction.
* ``near_dup_threshold`` [0.95]: cosine similarity of question vectors at which two examples are
  near-duplicates.
* ``validation_share`` [0.2], ``seed`` [0], ``min_size`` [20] (least train examples, a check),
  ``max_tokens`` [1024] (longest example in tokens; None: no limit), ``incremental`` [False]:
  candidates already in the previous version are left to replay instead of being built again.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _err(owner: str, name: str, msg: str, value: Any) -> ValueError:
    return ValueError(f"{owner}.{name} {msg}, got {value!r}")


def _str_tuple(owner: str, name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _err(owner, name, "must be a list of non-empty strings", value)
    return tuple(sorted({v.strip() for v in value}))


def _day(owner: str, name: str, value: Any) -> date | None:
    if value is None or (isinstance(value, date) and type(value) is date):
        return value
    if hasattr(value, "date") and isinstance(value, date):  # a datetime: its day
        return value.date()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise _err(owner, name, "must be an ISO date (YYYY-MM-DD) or None", value)


def _number(owner: str, name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False,
            hi_open: bool = False, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _err(owner, name, "must be a number", value)
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise _err(owner, name, f"must be in {interval}", value)
    return float(value)


def _int(owner: str, name: str, value: Any, lo: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise _err(owner, name, f"must be an integer >= {lo}" + (" or None" if optional else ""),
                   value)
    return int(value)


@dataclass(frozen=True)
class Filters:
    """Which new candidates are eligible (see the module docstring)."""

    date_from: date | None = None
    date_to: date | None = None
    quality_min: float | None = None
    quality_max: float | None = None
    categories: tuple[str, ...] = ()
    intents: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        o = "DatasetSpec.filters"
        set_ = object.__setattr__
        set_(self, "date_from", _day(o, "date_from", self.date_from))
        set_(self, "date_to", _day(o, "date_to", self.date_to))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise _err(o, "date_from", f"must not be after date_to ({self.date_to})",
                       self.date_from)
        set_(self, "quality_min", _number(o, "quality_min", self.quality_min, -math.inf,
                                          math.inf, optional=True))
        set_(self, "quality_max", _number(o, "quality_max", self.quality_max, -math.inf,
                                          math.inf, optional=True))
        if self.quality_min is not None and self.quality_max is not None \
                and self.quality_min > self.quality_max:
            raise _err(o, "quality_min", f"must not exceed quality_max ({self.quality_max})",
                       self.quality_min)
        for name in ("categories", "intents", "sources", "tenants"):
            set_(self, name, _str_tuple(o, name, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("date_from", "date_to"):
            d[k] = d[k].isoformat() if d[k] else None
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def source_matches(source: str, patterns: tuple[str, ...]) -> bool:
    """``source`` equals a pattern, or starts with a pattern's text before its trailing ``*``."""
    return any(source.startswith(p[:-1]) if p.endswith("*") else source == p for p in patterns)


@dataclass(frozen=True)
class DatasetSpec:
    """A training dataset's recipe (see the module docstring for every field)."""

    name: str = "default"
    filters: Filters = field(default_factory=Filters)
    include_tags: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ("exclude",)
    category_caps: Mapping[str, int] = field(default_factory=dict, hash=False)
    default_cap: int | None = None
    max_category_share: float | None = 0.5
    replay_share: float = 0.2
    replay_min_quality: float = 0.8
    near_dup_threshold: float = 0.95
    validation_share: float = 0.2
    seed: int = 0
    min_size: int = 20
    max_tokens: int | None = 1024
    incremental: bool = False

    def __post_init__(self) -> None:
        o = "DatasetSpec"
        set_ = object.__setattr__
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise _err(o, "name", "must be 1-64 letters, digits, '_', '.' or '-' (starting "
                                  "with a letter or digit)", self.name)
        if isinstance(self.filters, Mapping):
            unknown = sorted(set(self.filters) - {f.name for f in fields(Filters)})
            if unknown:
                raise _err(o, "filters", f"has unknown keys {unknown}", dict(self.filters))
            set_(self, "filters", Filters(**self.filters))
        elif not isinstance(self.filters, Filters):
            raise _err(o, "filters", "must be a Filters or a mapping", self.filters)
        set_(self, "include_tags", _str_tuple(o, "include_tags", self.include_tags))
        set_(self, "exclude_tags", _str_tuple(o, "exclude_tags", self.exclude_tags))
        both = set(self.include_tags) & set(self.exclude_tags)
        if both:
            raise _err(o, "include_tags", f"shares {sorted(both)} with exclude_tags",
                       list(self.include_tags))
        if not isinstance(self.category_caps, Mapping):
            raise _err(o, "category_caps", "must be a mapping of category -> cap",
                       self.category_caps)
        caps = {}
        for cat, cap in self.category_caps.items():
            if not isinstance(cat, str) or not cat.strip():
                raise _err(o, "category_caps", "keys must be non-empty category names", cat)
            caps[cat.strip()] = _int(o, f"category_caps[{cat!r}]", cap, 1)
        set_(self, "category_caps", dict(sorted(caps.items())))
        set_(self, "default_cap", _int(o, "default_cap", self.default_cap, 1, optional=True))
        set_(self, "max_category_share", _number(o, "max_category_share",
                                                 self.max_category_share, 0, 1, lo_open=True,
                                                 optional=True))
        set_(self, "replay_share", _number(o, "replay_share", self.replay_share, 0, 1,
                                           hi_open=True))
        set_(self, "replay_min_quality", _number(o, "replay_min_quality",
                                                 self.replay_min_quality, -math.inf, math.inf))
        set_(self, "near_dup_threshold", _number(o, "near_dup_threshold",
                                                 self.near_dup_threshold, 0, 1, lo_open=True))
        set_(self, "validation_share", _number(o, "validation_share", self.validation_share,
                                               0, 1, hi_open=True))
        set_(self, "seed", _int(o, "seed", self.seed, 0))
        set_(self, "min_size", _int(o, "min_size", self.min_size, 0))
        set_(self, "max_tokens", _int(o, "max_tokens", self.max_tokens, 1, optional=True))
        if not isinstance(self.incremental, bool):
            raise _err(o, "incremental", "must be true or false", self.incremental)

    def cap_for(self, category: str) -> int | None:
        """The cap of ``category``: its own, else ``default_cap`` (None: no cap)."""
        return self.category_caps.get(category, self.default_cap)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "filters": self.filters.to_dict(),
            "include_tags": list(self.include_tags), "exclude_tags": list(self.exclude_tags),
            "category_caps": dict(self.category_caps), "default_cap": self.default_cap,
            "max_category_share": self.max_category_share, "replay_share": self.replay_share,
            "replay_min_quality": self.replay_min_quality,
            "near_dup_threshold": self.near_dup_threshold,
            "validation_share": self.validation_share, "seed": self.seed,
            "min_size": self.min_size, "max_tokens": self.max_tokens,
            "incremental": self.incremental,
        }

    def to_json(self) -> str:
        """The canonical JSON form (sorted keys, compact): what the version hash covers."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> DatasetSpec:
        """A spec from a mapping (e.g. run config or stored JSON); unknown keys are an error."""
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"DatasetSpec has no fields {unknown}")
        return cls(**d)
