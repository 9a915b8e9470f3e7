"""Helpers shared by the unit and pipeline tests (not tests themselves)."""
