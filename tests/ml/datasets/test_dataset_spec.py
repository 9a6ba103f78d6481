"""DatasetSpec: validation naming the field, canonical JSON; Example parsing and the hashes."""

from __future__ import annotations

import json
from datetime import date

import pytest

from ml.datasets import DatasetSpec, Example, Filters, example_hash, prompt_hash
from ml.datasets.examples import conversation_problem


def test_defaults_and_canonical_json_round_trip():
    spec = DatasetSpec()
    assert spec.name == "default" and spec.exclude_tags == ("exclude",)
    assert spec.replay_share == 0.2 and spec.validation_share == 0.2 and not spec.incremental
    d = json.loads(spec.to_json())
    assert list(d) == sorted(d) and d["filters"]["categories"] == []
    assert DatasetSpec.from_dict(d) == spec
    assert DatasetSpec.from_dict(d).to_json() == spec.to_json()


def test_specs_that_mean_the_same_give_the_same_json():
    a = DatasetSpec(category_caps={"shipping": 5, "billing": 3},
                    filters={"categories": ["shipping", "billing"], "date_from": "2026-01-01"},
                    exclude_tags=["spam", "exclude"])
    b = DatasetSpec(category_caps={"billing": 3, "shipping": 5},
                    filters=Filters(categories=("billing", "shipping"),
                                    date_from=date(2026, 1, 1)),
                    exclude_tags=("exclude", "spam", "spam"))
    assert a == b and a.to_json() == b.to_json()
    assert DatasetSpec.from_dict(json.loads(a.to_json())) == a
    assert a.cap_for("billing") == 3 and a.cap_for("other") is None
    assert DatasetSpec(seed=1).to_json() != DatasetSpec().to_json()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"replay_share": 1.0}, r"DatasetSpec.replay_share must be in \[0, 1\), got 1.0"),
    ({"validation_share": -0.1}, r"DatasetSpec.validation_share must be in \[0, 1\)"),
    ({"near_dup_threshold": 0}, r"DatasetSpec.near_dup_threshold must be in \(0, 1\]"),
    ({"max_category_share": 1.5}, r"DatasetSpec.max_category_share must be in \(0, 1\]"),
    ({"category_caps": {"billing": 0}}, r"DatasetSpec.category_caps\['billing'\] must be an "
                                        r"integer >= 1"),
    ({"default_cap": 2.5}, r"DatasetSpec.default_cap must be an integer >= 1 or None"),
    ({"seed": -1}, r"DatasetSpec.seed must be an integer >= 0"),
    ({"min_size": "20"}, r"DatasetSpec.min_size must be an integer"),
    ({"max_tokens": 0}, r"DatasetSpec.max_tokens must be an integer >= 1 or None"),
    ({"name": "bad name!"}, r"DatasetSpec.name must be"),
    ({"incremental": "yes"}, r"DatasetSpec.incremental must be true or false"),
    ({"include_tags": ["gold", "exclude"]}, r"DatasetSpec.include_tags shares \['exclude'\]"),
    ({"filters": {"date_from": "2026-02-01", "date_to": "2026-01-01"}},
     r"DatasetSpec.filters.date_from must not be after date_to"),
    ({"filters": {"quality_min": 0.9, "quality_max": 0.5}},
     r"DatasetSpec.filters.quality_min must not exceed quality_max"),
    ({"filters": {"date_from": "yesterday"}}, r"DatasetSpec.filters.date_from must be an ISO"),
    ({"filters": {"colour": "red"}}, r"DatasetSpec.filters has unknown keys \['colour'\]"),
    ({"filters": {"categories": "billing"}}, r"DatasetSpec.filters.categories must be a list"),
])
def test_a_bad_value_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetSpec(**kwargs)


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"DatasetSpec has no fields \['replay'\]"):
        DatasetSpec.from_dict({"replay": 0.1})


def test_prompt_hash_ignores_case_and_spacing_the_example_hash_keeps_the_reply_case():
    a = [{"role": "user", "content": "How do I reset my password?"}]
    b = [{"role": "user", "content": "  how do I\treset  my PASSWORD? "}]
    c = [{"role": "system", "content": "Be brief."}, *a]
    assert prompt_hash(a) == prompt_hash(b) != prompt_hash(c)
    assert example_hash(a, "Use the link.") == example_hash(b, " Use  the link. ")
    assert example_hash(a, "Use the link.") != example_hash(a, "use the link.")
    assert len(prompt_hash(a)) == 64


def test_example_from_dict_names_the_field_and_key(ex):
    e = Example.from_dict(ex(1, "Where is my order?", category=None, tags=["b", "a", "a"]))
    assert e.category == "uncategorized" and e.tags == ("a", "b")
    assert e.timestamp.tzinfo is not None and e.question == "Where is my order?"
    assert e.conversation()[-1] == {"role": "assistant", "content": "Answer number 1."}
    with pytest.raises(ValueError, match=r"example sample:2: quality must be a finite number"):
        Example.from_dict(ex(2, "q", quality="high"))
    with pytest.raises(ValueError, match=r"example sample:3: messages\[0\] must be"):
        Example.from_dict({**ex(3, "q"), "messages": [{"role": "user"}]})
    with pytest.raises(ValueError, match=r"example sample:4: session_key must be a non-empty"):
        Example.from_dict({**ex(4, "q"), "session_key": ""})
    with pytest.raises(ValueError, match=r"example key must be a string starting with"):
        Example.from_dict({**ex(5, "q"), "key": "5"})
    with pytest.raises(ValueError, match=r"example sample:6: unknown fields \['colour'\]"):
        Example.from_dict({**ex(6, "q"), "colour": "red"})


def test_conversation_rules():
    u, a, s = ({"role": r, "content": "x"} for r in ("user", "assistant", "system"))
    assert conversation_problem([s, u, a]) is None and conversation_problem([u, a, u, a]) is None
    assert "expected role user" in conversation_problem([a, u])
    assert "expected role assistant" in conversation_problem([u, u, a])
    assert "ends with user" in conversation_problem([u])
    assert conversation_problem([u], ends_with="user") is None
    assert "role 'tool'" in conversation_problem([{"role": "tool", "content": "x"}, a])
    assert "empty turn" in conversation_problem([u, {"role": "assistant", "content": "  "}])
    assert "expected role user, got system" in conversation_problem([s, s, u, a])
