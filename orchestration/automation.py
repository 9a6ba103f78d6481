"""Declarative automation: the sensor that evaluates the automation conditions of the assets.

The dbt models carry ``assets.analytics.AUTOMATION_CONDITION`` (materialize after new upstream
data; that module's docstring explains the condition). A condition does nothing until a sensor
evaluates it. Dagster would create ``default_automation_condition_sensor`` for them implicitly,
but STOPPED (someone must switch it on in the UI); this explicit sensor targets the analytics group
and starts RUNNING like the other sensors of the code location, under the Dagster daemon (``dg
dev``/``make dev``, ``dagster-daemon run``). Stop it in the UI (Automation tab) to turn the
automation off: the hourly analytics_schedule still refreshes the marts. ``learnloop run`` and
``learnloop demo`` run their jobs explicitly and are not affected by it.
"""

import dagster as dg

from assets.analytics import ANALYTICS_GROUP

# how often the daemon evaluates the conditions; each evaluation only reads the instance
AUTOMATION_INTERVAL_S = 60

analytics_automation_sensor = dg.AutomationConditionSensorDefinition(
    "analytics_automation_sensor",
    target=dg.AssetSelection.groups(ANALYTICS_GROUP),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_S,
    description="Evaluates the automation conditions of the dbt models: after new data in a "
                "source (interactions, quality scores, audit verdicts, review decisions, "
                "evaluations) it starts one dbt build of the models downstream of it.",
)
