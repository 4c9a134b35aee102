"""Embedding networks, their converters and the registry that loads them by model id."""
