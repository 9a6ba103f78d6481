"""Partitions shared by the ingest and quality stages."""

import dagster as dg

from ml.landing import FIRST_DAY, MAX_FUTURE_DAYS

# One partition per landing-zone day folder (`date=YYYY-MM-DD`, UTC). Daily partitions, so a key
# is a calendar date and a range (a backfill, `learnloop run --since/--until`) means the dates in
# it, in order. They start at ``ml.landing.FIRST_DAY`` (logs arrive for old days too: imports of
# historical exports) and end ``MAX_FUTURE_DAYS`` after today (UTC): a landing folder outside that
# range, or not a calendar date, is reported and skipped (``ml.landing.scan_partitions``). The keys
# are the same "YYYY-MM-DD" strings the earlier dynamic partitions used, so materializations
# recorded before keep matching their day.
landing_date_partitions = dg.DailyPartitionsDefinition(
    start_date=FIRST_DAY.isoformat(), end_offset=MAX_FUTURE_DAYS, timezone="UTC",
    fmt="%Y-%m-%d")
