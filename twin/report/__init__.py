"""Figures and the self-contained HTML report of a run, made from its result files only.

``build_report(run_dir)`` reads ``results/<scenario>/`` (tables, the care-team list in the trace,
``run.json`` and the resolved ``scenario.toml``), draws the figures into ``figures/`` and writes
``report.html`` for a clinician: key figures with units and intervals, every care team's alerts,
nurse hours and backlog, the calibration against C1–C20, and the figures with captions. The report
never touches model objects, so it can be rebuilt from an archived results directory.

``build_comparison_report`` and ``build_whatif_report`` do the same for the outputs of
``twin compare`` and ``twin what-if``.
"""

from twin.report.html import build_comparison_report, build_report, build_whatif_report

__all__ = ["build_comparison_report", "build_report", "build_whatif_report"]
