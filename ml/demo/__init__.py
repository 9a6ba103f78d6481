"""Demo and test material, not the product.

* ``generate``: seeded demo support-bot logs (several tenants, planted mistakes, PII, malformed
  lines and re-sends; same seed, same bytes) in the landing-zone layout, with a ground-truth file
  ``truth.jsonl`` ({interaction_id, mistake, intent, answer}) that is never inside the records;
* ``truth``: reading those truth files and scoring an auditor's verdicts against them (precision,
  recall, category accuracy);
* ``reviewer``: the decision a careful reviewer would make on a review item, from that ground truth
  (with a small seeded share of mistakes and stylistic edits); ``learnloop demo`` records them under
  the reviewer ``demo-reviewer`` through ``orchestration.demo_review`` (never on real data).

Used by ``learnloop generate`` / ``learnloop demo``, the tests and the benchmarks. The product's
stages do not import it, except the demo-only precision/recall metadata of ``audited_errors``
(reported only when a ``truth.jsonl`` lies in the landing root).
"""
