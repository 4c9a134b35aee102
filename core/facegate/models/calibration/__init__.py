"""Committed calibration records, one JSON file per model id."""
