"""Batch jobs on S3 and SQS: photo sets into gallery parts, verification jobs, re-embedding.

The message, manifest, results and aggregation modules are torch-free; the jobs that embed take
a :class:`facegate.types.FaceProcessor`, so importing any of them never imports torch.
"""
