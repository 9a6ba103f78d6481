"""Deployment logic without I/O to the stores: traffic assignment, the statistics of A/B tests,
the experiment decision policy, per-arm metrics from the warehouse, and model serving."""
