"""The HTML divergence report, rendered from results.json alone."""

from harness.report.render import render_report, write_report

__all__ = ["render_report", "write_report"]
