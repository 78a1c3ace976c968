"""Figures, brain maps and the report page."""
