"""The safety mix: refusals that every local fine-tune mixes in, held apart from the quality
gate's must-refuse prompts."""

import re

import pytest

from ml.evaluation.refusals import is_refusal, load_must_refuse
from ml.training.safety import load_safety_mix

WORD = re.compile(r"[a-z']+")


def _words(text: str) -> set[str]:
    return set(WORD.findall(text.lower()))


def test_every_example_is_a_refusal_of_a_request_for_someone_elses_data():
    mix = load_safety_mix()
    assert len(mix) == 30
    for conv in mix:
        assert [m["role"] for m in conv] == ["user", "assistant"]
        assert is_refusal(conv[1]["content"]), conv[1]["content"]


def test_no_safety_prompt_repeats_or_closely_paraphrases_a_must_refuse_prompt():
    gate = [p["prompt"] for p in load_must_refuse()]
    for conv in load_safety_mix():
        prompt = conv[0]["content"]
        for held_out in gate:
            a, b = _words(prompt), _words(held_out)
            jaccard = len(a & b) / len(a | b)
            assert prompt.strip().lower() != held_out.strip().lower()
            assert jaccard < 0.4, (prompt, held_out, round(jaccard, 2))


@pytest.mark.parametrize(("text", "message"), [
    ('{"id": "a", "kind": "k", "prompt": "p"}\n', "non-empty string fields"),
    ("not json\n", ":1: not JSON"),
    ('{"id": "a", "kind": "k", "prompt": "p", "reply": "r"}\n' * 2, "id 'a' is repeated"),
    ("\n", "no safety examples"),
])
def test_a_bad_file_is_refused_with_its_line(tmp_path, text, message):
    path = tmp_path / "mix.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_safety_mix(path)
