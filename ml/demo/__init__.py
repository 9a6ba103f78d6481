"""Demo and test material, not the product.

* ``generate``: seeded demo support-bot logs (several tenants, planted mistakes, PII, malformed
  lines and re-sends; same seed, same bytes) in the landing-zone layout, with a ground-truth file
  ``truth.jsonl`` ({interaction_id, mistake}) that is never inside the records.

Used by ``learnloop generate`` / ``learnloop demo``, the tests and the benchmarks; the product's
stages do not import it.
"""
