"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Per step: ``datapipe_step_pending_keys``, ``datapipe_step_failed_keys``,
``datapipe_step_processed_keys`` (batch steps only), ``datapipe_step_running`` (0/1, the run lock),
``datapipe_step_last_run_seconds`` and ``datapipe_step_last_run_success`` (runs started from this
server). Per table: ``datapipe_table_rows`` (live rows, from the metadata; capped, see
``views.COUNT_CAP``, with ``datapipe_table_rows_exact`` 0 when the cap was reached).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from datapipe.compute import DatapipeApp

from . import views

HELP = {
    "datapipe_step_pending_keys": ("gauge", "Keys the step has yet to process (from the change query)."),
    "datapipe_step_failed_keys": ("gauge", "Keys whose last attempt failed."),
    "datapipe_step_processed_keys": ("gauge", "Keys the step has processed (or attempted)."),
    "datapipe_step_running": ("gauge", "1 while some process holds the step's run lock."),
    "datapipe_step_last_run_seconds": ("gauge", "Duration of the step's last run started from this server."),
    "datapipe_step_last_run_success": ("gauge", "1 if that run had no failed batch, else 0."),
    "datapipe_table_rows": ("gauge", "Live rows of the table, from its metadata (capped)."),
    "datapipe_table_rows_exact": ("gauge", "0 when datapipe_table_rows hit the count cap."),
}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(app: DatapipeApp, running_here: List[str], last_runs: Dict[str, Dict[str, Any]]) -> str:
    samples: Dict[str, List[Tuple[str, str, Any]]] = {name: [] for name in HELP}
    for step in app.steps:
        st = views.step_status(app, step, step.name in running_here)
        for metric, key in (
            ("datapipe_step_pending_keys", "pending"),
            ("datapipe_step_failed_keys", "failed"),
            ("datapipe_step_processed_keys", "processed"),
        ):
            if st[key] is not None:
                samples[metric].append(("step", step.name, st[key]))
        samples["datapipe_step_running"].append(("step", step.name, int(st["running"])))
        last = last_runs.get(step.name)
        if last is not None:
            samples["datapipe_step_last_run_seconds"].append(("step", step.name, last["seconds"]))
            ok = last["failed"] == 0 and last["status"] != "error"
            samples["datapipe_step_last_run_success"].append(("step", step.name, int(ok)))
    for table in views.tables_overview(app):
        samples["datapipe_table_rows"].append(("table", table["name"], table["rows"]["count"]))
        samples["datapipe_table_rows_exact"].append(("table", table["name"], int(table["rows"]["exact"])))
    lines = []
    for metric, (kind, text) in HELP.items():
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{{label}="{_label(value)}"}} {number}' for label, value, number in samples[metric]]
    return "\n".join(lines) + "\n"
