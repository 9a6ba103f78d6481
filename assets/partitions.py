"""Partitions shared by the ingest and quality stages."""

import dagster as dg

# One partition per landing-zone day folder (`date=YYYY-MM-DD`). Dynamic, because logs arrive for
# arbitrary historical days (imports of old exports) as well as today; the landing sensor and the
# CLI add partitions as day folders appear.
landing_date_partitions = dg.DynamicPartitionsDefinition(name="landing_date")
