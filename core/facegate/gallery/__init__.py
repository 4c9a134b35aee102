"""Galleries: the Parquet format, exact search, the in-memory index and its cache, compaction."""
