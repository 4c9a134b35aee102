"""Per-gallery work on queues: a compaction per gallery, an ANN index build. Torch-free.

The hourly schedule compacts no gallery itself: it queues one :class:`CompactGallery` per
gallery with parts on the compaction queue, and the compaction function takes them one at a
time, so galleries compact in parallel (Lambda concurrency) and one slow or failing gallery
delays no other; SQS retries a failed one and parks it in the dead-letter queue after three
tries. A compaction that leaves a gallery of at least ``FACEGATE_ANN_MIN_ROWS`` rows queues an
:class:`IndexGallery` on the ingest queue: the embedding function (the container image, which
has faiss) builds the gallery's ANN index (:mod:`facegate.storage.gallery_ann`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from facegate.batch.messages import Message
from facegate.common import check_positive, validate_id
from facegate.storage.queues import send_messages

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

COMPACT_GALLERY = "facegate.compact_gallery"
INDEX_GALLERY = "facegate.index_gallery"


@dataclass(frozen=True)
class CompactGallery(Message):
    """Compact one gallery (incrementally when it can: :meth:`GalleryStore.compact`)."""

    MESSAGE_TYPE: ClassVar[str] = COMPACT_GALLERY

    gallery: str

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")

    def fields(self) -> dict[str, Any]:
        return {"gallery": self.gallery}

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(gallery=doc["gallery"])


@dataclass(frozen=True)
class IndexGallery(Message):
    """Build the ANN index of a compacted gallery with at least ``min_rows`` rows."""

    MESSAGE_TYPE: ClassVar[str] = INDEX_GALLERY

    gallery: str
    min_rows: int

    def __post_init__(self) -> None:
        validate_id(self.gallery, "gallery")
        check_positive(self.min_rows, "an index request's min_rows")

    def fields(self) -> dict[str, Any]:
        return {"gallery": self.gallery, "min_rows": self.min_rows}

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(gallery=doc["gallery"], min_rows=doc["min_rows"])


def queue_compactions(sqs: SQSClient, queue_url: str | None, galleries: Sequence[str]) -> int:
    """One :class:`CompactGallery` per gallery on the compaction queue; how many."""
    bodies = [CompactGallery(g).to_message() for g in galleries]
    send_messages(sqs, queue_url, bodies, "gallery compactions")
    return len(bodies)


def queue_index_build(sqs: SQSClient, queue_url: str | None, gallery: str, min_rows: int) -> None:
    send_messages(sqs, queue_url, [IndexGallery(gallery, min_rows).to_message()], "index builds")
