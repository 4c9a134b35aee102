"""Committed calibration records: ``<detector>/<model id>.json``, one per model and detector
(the threshold depends on whose crops the model embeds)."""
