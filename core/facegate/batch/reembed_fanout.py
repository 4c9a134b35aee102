"""Re-embedding fanned out on the jobs queue: one chunk of photos per message.

A re-embedding request taken by the jobs worker no longer runs in one invocation (15 minutes
on Lambda: about 10,000 photos). :func:`plan_reembed` lists the source photos once, splits
them into :class:`ReembedChunk` messages of ``FACEGATE_ARCHIVE_CHUNK_SIZE`` photos (within
SQS's size limit) on the jobs queue and records ``running`` with the number of chunks; the
workers take the chunks concurrently, up to the jobs function's concurrency. Each chunk
(:func:`run_chunk`) embeds its photos into its own part of the target gallery (named after
the request and its index, so a retry overwrites itself), then writes a small marker
``reembed/<target>/chunks/<index>.json`` with its counts; the chunk that finds every marker
present compacts the target and records ``done`` with the totals. Compaction is idempotent
and conditional, so two chunks that both see the last marker both compact harmlessly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from facegate.batch.messages import Message, envelope_bytes, pack
from facegate.batch.reembed import (
    PhotoFetcher,
    ReembedRequest,
    SourcePhoto,
    not_erased,
    put_status,
)
from facegate.batch.reembed_job import check_model, source_photos, write_chunk
from facegate.common import check_index, check_positive, compact_json
from facegate.errors import ValidationError
from facegate.settings import MultiFacePolicy
from facegate.storage.galleries import GalleryStore
from facegate.storage.keys import reembed_status_key
from facegate.storage.objects import ObjectStore
from facegate.storage.queues import send_messages
from facegate.storage.subjects import SubjectStore
from facegate.storage.tombstones import Erasures
from facegate.types import FaceProcessor

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

REEMBED_CHUNK = "facegate.reembed_chunk"


@dataclass(frozen=True)
class ReembedChunk(Message):
    """Photos ``[key, subject, source_at]`` of chunk ``index`` of ``total`` of a request."""

    MESSAGE_TYPE: ClassVar[str] = REEMBED_CHUNK

    request: ReembedRequest
    scope: str
    index: int
    total: int
    photos: tuple[SourcePhoto, ...]

    def __post_init__(self) -> None:
        check_positive(self.total, "a re-embedding chunk's total")
        if check_index(self.index, "a re-embedding chunk's index") >= self.total:
            raise ValidationError("a re-embedding chunk's index is past its total")
        if not self.photos:
            raise ValidationError("a re-embedding chunk has no photos")

    def fields(self) -> dict[str, Any]:
        return {
            **self.request.fields(),
            "scope": self.scope,
            "index": self.index,
            "total": self.total,
            "photos": [list(p) for p in self.photos],
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(
            request=ReembedRequest.from_fields(doc),
            scope=doc["scope"],
            index=doc["index"],
            total=doc["total"],
            photos=tuple(SourcePhoto(*p) for p in doc["photos"]),
        )


def _chunks_prefix(target: str) -> str:
    return reembed_status_key(target).removesuffix(".json") + "/chunks/"


def plan_reembed(
    sqs: SQSClient,
    queue_url: str | None,
    s3: Any,
    bucket: str,
    request: ReembedRequest,
    *,
    subjects: SubjectStore | None = None,
    erasures: Erasures | None = None,
    chunk_size: int = 200,
) -> int:
    """List the source photos, queue them as chunks, record ``running``; the chunk count."""
    photos, scope = source_photos(GalleryStore(s3, bucket), request, subjects, erasures)
    head = {**request.fields(), "scope": scope, "index": 0, "total": 1, "photos": []}
    groups = pack(
        photos,
        chunk_size,
        envelope=envelope_bytes(REEMBED_CHUNK, ReembedChunk.MESSAGE_VERSION, head) + 16,
        cost=lambda p: len(compact_json(list(p))) + 1,
    )
    bodies = [
        ReembedChunk(request, scope, i, len(groups), tuple(group)).to_message()
        for i, group in enumerate(groups)
    ]
    objects = ObjectStore(s3, bucket)
    for stale in objects.list_keys(_chunks_prefix(request.target)):
        objects.delete(stale)  # markers of an earlier request into the same target
    put_status(
        s3,
        bucket,
        request.target,
        {
            "status": "running",
            "source": request.source,
            "target": request.target,
            "model_id": request.model_id,
            "photos": len(photos),
            "chunks": len(groups),
        },
    )
    send_messages(sqs, queue_url, bodies, "re-embedding chunks")
    return len(groups)


def run_chunk(
    pipeline: FaceProcessor,
    s3: Any,
    bucket: str,
    chunk: ReembedChunk,
    *,
    erasures: Erasures | None = None,
    max_photo_bytes: int = 15 * 1024 * 1024,
    policy: MultiFacePolicy = "reject",
) -> bool:
    """Embed one chunk into its part; the last chunk done compacts. Whether it finished the
    request."""
    request = chunk.request
    check_model(pipeline, request)
    store = GalleryStore(s3, bucket)
    fetch = PhotoFetcher(s3, bucket, max_photo_bytes)
    photos = not_erased(list(chunk.photos), chunk.scope, erasures)
    part = write_chunk(pipeline, store, fetch, request, chunk.index, photos, chunk.scope, policy)
    objects = ObjectStore(s3, bucket)
    prefix = _chunks_prefix(request.target)
    objects.put_json(
        f"{prefix}{chunk.index:05d}.json",
        {"photos": len(chunk.photos), "faces": part.faces, "rejects": part.rejects.num_rows},
    )
    done = objects.list_keys(prefix)
    if len(done) < chunk.total:
        return False
    # Full: every part of the target was just written (a re-run rewrites them whole).
    compaction = store.compact(
        request.target, erasures=erasures, expected_model_id=request.model_id, full=True
    )
    counts = [objects.get_json(k, "a re-embedding chunk's counts") or {} for k in done]
    put_status(
        s3,
        bucket,
        request.target,
        {
            "status": "done",
            "source": request.source,
            "target": request.target,
            "model_id": request.model_id,
            "photos": sum(int(c.get("photos", 0)) for c in counts),
            "faces": sum(int(c.get("faces", 0)) for c in counts),
            "rejects": sum(int(c.get("rejects", 0)) for c in counts),
            "parts": chunk.total,
            "rows": compaction.rows_out,
        },
    )
    return True
