"""requirements.lock is the tested set that `make install` installs: it must be a resolution of
pyproject.toml's ranges, keep torch on the CPU wheel and bring in no CUDA stack."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CUDA_PREFIXES = ("nvidia-", "triton", "cuda-")


def read_lock(text: str) -> dict[str, Version]:
    """name -> pinned version of every `name==version` line; anything else is an error."""
    pins: dict[str, Version] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            raise ValueError(f"requirements.lock line {n}: {raw!r} is not an exact pin")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"requirements.lock line {n}: {req.name} is pinned twice")
        pins[name] = Version(specs[0].version)
    return pins


def declared(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def unmet(requirements: list[Requirement], pins: dict[str, Version]) -> list[str]:
    """Every requirement without a pin that satisfies it, as a readable line."""
    problems = []
    for req in requirements:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name}: not in requirements.lock")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}: locked {pin} is outside {req.specifier}")
    return problems


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    return read_lock((ROOT / "requirements.lock").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_declared_dependency_is_pinned_inside_its_range(pins, pyproject):
    requirements = declared(pyproject)
    assert len(requirements) > 30  # the dependencies and the test extra were both read
    assert unmet(requirements, pins) == []


def test_every_declared_dependency_has_an_upper_bound(pyproject):
    unbounded = [str(r) for r in declared(pyproject)
                 if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert unbounded == []


def test_torch_is_the_cpu_wheel_and_no_cuda_stack_is_locked(pins):
    assert pins["torch"].public == "2.13.0" and pins["torch"].local in (None, "cpu")
    assert [n for n in pins if n.startswith(CUDA_PREFIXES)] == []


def test_the_checks_catch_a_pin_outside_its_range_and_a_missing_pin():
    pins = read_lock("polars==2.1.0\nduckdb==2.0.1  # via dbt-duckdb\n")
    requirements = [Requirement("polars>=1.20,<2"), Requirement("duckdb>=1.2,<3"),
                    Requirement("psycopg[binary]>=3.2,<4")]
    assert unmet(requirements, pins) == [
        "polars: locked 2.1.0 is outside <2,>=1.20",
        "psycopg: not in requirements.lock",
    ]


def test_a_lock_line_that_is_not_an_exact_pin_is_refused():
    with pytest.raises(ValueError, match="line 2: 'polars>=2' is not an exact pin"):
        read_lock("duckdb==2.0.1\npolars>=2\n")
