"""Reports (markdown tables, HTML pages, plots) generated from evaluation records."""

from advguard.reports.tables import html_report, load_summaries, markdown_report, pct

__all__ = ["html_report", "load_summaries", "markdown_report", "pct"]
