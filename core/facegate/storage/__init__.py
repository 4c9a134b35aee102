"""Storage: the only package that talks to S3 and DynamoDB. Torch-free.

Objects go through one object store (``get``/``put``, a single ``ObjectNotFound``, encryption
and content type on every put); every key layout lives in :mod:`facegate.storage.keys`; the
DynamoDB stores keep subjects, jobs, the ingest ledger, tombstones and API keys in one table.
"""
