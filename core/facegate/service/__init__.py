"""The service layer: the one place that decides, for the API and the CLI alike.

- :mod:`facegate.service.probes`: decisions that need only the served model: the decision
  threshold (a request's ``threshold`` or ``far``, else the deployment's, never below its
  floor), a caller's reference embedding, 1:1 of two photos, the answers (scores to 3
  decimals).
- :mod:`facegate.service.faces`: :class:`FaceService`, enrolment, verification and
  identification over the subject and photo stores.
- :mod:`facegate.service.galleries`: :class:`GalleryService`, batch galleries' summary,
  compaction and the re-embedding submission (one status document).

Torch-free: the pipeline arrives as a :class:`~facegate.types.FaceProcessor`.
"""

from facegate.service.faces import FaceService, PhotoOutcome
from facegate.service.galleries import GalleryService, queued_status
from facegate.service.probes import (
    check_policy,
    compare_photos,
    decision_floor,
    decision_threshold,
    embedding_response,
    reference_embedding,
    verification_response,
)

__all__ = [
    "FaceService",
    "GalleryService",
    "PhotoOutcome",
    "check_policy",
    "compare_photos",
    "decision_floor",
    "decision_threshold",
    "embedding_response",
    "queued_status",
    "reference_embedding",
    "verification_response",
]
