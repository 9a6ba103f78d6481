"""The shipped evaluate modules: offline loading into a private cache (nothing written into the
package, no network), agreement with rouge_score and sacrebleu called directly, and exact-match
normalisation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ml.evaluation.metrics import METRICS, METRICS_DIR, load_metric, metric_path

ROOT = Path(__file__).resolve().parents[3]
PREDICTIONS = ["The Nova headset costs $129.", "Shipping is free on orders over 50 dollars",
               "I can't share another customer's details.", "returns are accepted",
               "Standard delivery takes three to five business days."]
REFERENCES = ["The Nova headset costs $129.", "Shipping is free on orders over $50.",
              "I'm sorry, but I can't share another customer's details.",
              "You can return any item within 30 days of delivery.",
              "Standard delivery takes 3-5 business days."]

OFFLINE_SCRIPT = r"""
import json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from ml.evaluation.metrics import load_metric
out = {}
for name in ("rouge", "bleu", "exact_match"):
    m = load_metric(name)
    out[name] = m.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])
import evaluate.config
out["modules_cache"] = str(evaluate.config.HF_MODULES_CACHE)
print(json.dumps(out))
"""


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts)


def test_modules_load_offline_into_a_private_cache_and_not_into_the_package(tmp_path):
    before = _tree(METRICS_DIR)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rouge"]["rougeL"] == pytest.approx(1.0)
    assert out["bleu"]["bleu"] == pytest.approx(1.0) and out["bleu"]["score"] == pytest.approx(100.0)
    assert out["exact_match"] == {"exact_match": 1.0}
    cache = Path(out["modules_cache"])
    assert cache == tmp_path / "hf" / "modules"
    for name in METRICS:
        copies = list((cache / "evaluate_modules" / "metrics" / name).glob(f"*/{name}.py"))
        assert len(copies) == 1 and copies[0].read_text() == metric_path(name).read_text()
    assert _tree(METRICS_DIR) == before  # nothing written into the package


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric 'meteor'.*rouge"):
        load_metric("meteor")


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_equals_rouge_score(use_stemmer):
    types = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    direct = [scorer.score(r, p) for p, r in zip(PREDICTIONS, REFERENCES, strict=True)]
    rouge = load_metric("rouge")
    got = rouge.compute(predictions=PREDICTIONS, references=REFERENCES, use_stemmer=use_stemmer)
    assert set(got) == set(types)
    for t in types:
        assert got[t] == pytest.approx(sum(d[t].fmeasure for d in direct) / len(direct), abs=1e-12)
    per = rouge.compute(predictions=PREDICTIONS, references=REFERENCES, rouge_types=["rougeL"],
                        use_stemmer=use_stemmer, use_aggregator=False)
    assert per["rougeL"] == pytest.approx([d["rougeL"].fmeasure for d in direct], abs=1e-12)
    assert per["rougeL"][0] == pytest.approx(1.0) and 0.5 < per["rougeL"][1] < 1


def test_rouge_stemming_changes_the_score():
    rouge = load_metric("rouge")
    plain = rouge.compute(predictions=["returns accepted"], references=["return accept"])
    stemmed = rouge.compute(predictions=["returns accepted"], references=["return accept"],
                            use_stemmer=True)
    assert plain["rouge1"] == 0.0 and stemmed["rouge1"] == pytest.approx(1.0)


def test_rouge_rejects_unknown_types():
    with pytest.raises(ValueError, match="rouge_types"):
        load_metric("rouge").compute(predictions=["a"], references=["a"], rouge_types=["rouge9"])


def test_bleu_equals_sacrebleu_on_a_0_to_1_scale():
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    got = load_metric("bleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert got["score"] == pytest.approx(direct.score, abs=1e-9)
    assert got["bleu"] == pytest.approx(direct.score / 100, abs=1e-12)
    assert 0 < got["bleu"] < 1
    assert got["precisions"] == pytest.approx(direct.precisions)
    assert got["brevity_penalty"] == pytest.approx(direct.bp)
    assert (got["sys_len"], got["ref_len"]) == (direct.sys_len, direct.ref_len)


def test_bleu_with_several_references_and_options():
    second = [r.upper() for r in REFERENCES]
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, second], lowercase=True)
    got = load_metric("bleu").compute(predictions=PREDICTIONS,
                                      references=[[a, b] for a, b in zip(REFERENCES, second, strict=True)],
                                      lowercase=True)
    assert got["score"] == pytest.approx(direct.score, abs=1e-9)
    cased = sacrebleu.corpus_bleu(PREDICTIONS, [second])
    assert load_metric("bleu").compute(predictions=PREDICTIONS, references=second)["score"] == \
        pytest.approx(cased.score, abs=1e-9)


@pytest.mark.parametrize(("options", "expected"), [
    ({}, 2 / 5),
    ({"strip_whitespace": False}, 1 / 5),
    ({"ignore_case": True}, 3 / 5),
    ({"ignore_case": True, "ignore_punctuation": True}, 5 / 5),
    ({"ignore_punctuation": True}, 4 / 5),
])
def test_exact_match_normalisation(options, expected):
    predictions = ["Order shipped.", "  order  shipped. ", "ORDER SHIPPED.", "Order shipped",
                   "order, shipped!"]
    references = ["Order shipped.", "order shipped.", "order shipped.", "Order shipped.",
                  "order shipped"]
    got = load_metric("exact_match").compute(predictions=predictions, references=references,
                                             **options)
    assert got["exact_match"] == pytest.approx(expected)
