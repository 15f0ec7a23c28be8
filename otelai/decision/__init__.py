"""Decisions on scored items: severity, consistent sampling, summaries of the dropped, local actions."""
