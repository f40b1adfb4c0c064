"""Render: results to terminal tables, JSON, HTML and figures. Never computes verdicts."""
