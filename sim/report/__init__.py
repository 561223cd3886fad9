"""The comparison report: Markdown tables and matplotlib charts from run results."""
