"""Verification evaluation: pair lists, the LFW protocol and its metrics (torch-free)."""
