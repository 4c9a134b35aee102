"""Erasure as a job: an erasure too large to answer in a request, fanned out over the jobs
workers, with its state and then its receipt in the bucket. Torch-free.

1. The API (:meth:`ErasureJobs.submit`) hands over a :class:`~facegate.batch.erasure.Plan`:
   the tombstone is recorded and the listing done, once. The plan is kept at
   ``erasures/<id>/plan.json``, the state ``queued`` at ``erasures/<id>.json``, and an
   :class:`ErasureRequest` goes on the jobs queue: from the moment the API answers 202, no
   part written from an older photo holds the person.
2. A worker (:meth:`ErasureJobs.run`) splits the plan's tasks into chunks of at most
   ``chunk_size`` tasks (and one queue message), sets the state ``running`` with the chunk
   count, and sends one :class:`ErasureChunk` per chunk; a plan of one chunk it runs itself.
   The split depends only on the plan, so a retried request sends the same chunks again,
   and a repeated chunk costs time, not correctness (next).
3. Workers run the chunks concurrently and in any order (:meth:`ErasureJobs.run_chunk`): the
   tombstone came first, so no task depends on another, and the one order that matters (a
   photo set's zip before its CSV manifest, which says which members are the person's) is
   inside one task. After each task that found something, the chunk's partial receipt is
   written (``chunks/<n>.json``), so a chunk retried after a crash skips what it records;
   then the chunk's done marker (``done/<n>``).
4. The worker that counts every chunk's marker merges the partial receipts, in chunk order,
   into the state ``done`` with the receipt, then deletes the work files (every version).
   S3 lists are strongly consistent, so of two chunks finishing together at least one sees
   both markers; two merging at once write the same receipt.

A task that fails for good (a :class:`~facegate.errors.FaceGateError` other than a storage
error) sets the state ``failed`` with the error; a storage error fails the message, which SQS
retries. Request and chunk bodies name the person: a dead-lettered one is found and deleted by
the next erasure of them (:func:`facegate.batch.dlq.body_names_subject` reads an unknown kind
by its text).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from facegate.batch.erasure import Eraser, Plan, Receipt, Removed, Task
from facegate.batch.messages import (
    ERASURE,
    ERASURE_CHUNK,
    MAX_MESSAGE_BYTES,
    Message,
    encode,
    pack,
)
from facegate.common import check_index, check_positive, compact_json, utc_now, validate_id
from facegate.errors import (
    FaceGateError,
    StorageError,
    UnknownErasureError,
    ValidationError,
)
from facegate.storage import keys as layout
from facegate.storage.queues import send_messages
from facegate.storage.tombstones import check_scope

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: Tasks per chunk message: a chunk is one worker's invocation (900 s at most), and a task
#: rewrites one table or photo set. Keys are at most 1,024 bytes, so 200 tasks fit a message.
DEFAULT_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 200

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass(frozen=True)
class ErasureRequest(Message):
    """Run erasure ``erasure_id`` (of ``subject_id`` in ``scope``) as a job: a
    :data:`~facegate.batch.messages.ERASURE` message."""

    MESSAGE_TYPE: ClassVar[str] = ERASURE

    erasure_id: str
    subject_id: str
    scope: str

    def __post_init__(self) -> None:
        validate_id(self.erasure_id, "erasure_id")
        validate_id(self.subject_id)
        check_scope(self.scope)

    def fields(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        return cls(doc.get("erasure_id", ""), doc.get("subject_id", ""), doc.get("scope", ""))


@dataclass(frozen=True)
class ErasureChunk(Message):
    """Chunk ``index`` of ``total`` of an erasure: its tasks, and what every task needs (the
    person, the scope and its galleries, the tombstone's time for the receipt)."""

    MESSAGE_TYPE: ClassVar[str] = ERASURE_CHUNK

    erasure_id: str
    subject_id: str
    scope: str
    erased_at: str
    galleries: tuple[str, ...]
    index: int
    total: int
    tasks: tuple[Task, ...]

    def __post_init__(self) -> None:
        validate_id(self.erasure_id, "erasure_id")
        validate_id(self.subject_id)
        check_scope(self.scope)
        for gallery in self.galleries:
            validate_id(gallery, "gallery")
        check_index(self.index, "chunk index")
        if check_positive(self.total, "chunk count") <= self.index:
            raise ValidationError(f"chunk index {self.index} out of range of {self.total}")
        if not self.tasks or not all(isinstance(t, Task) for t in self.tasks):
            raise ValidationError("an erasure chunk has at least one task")
        if not isinstance(self.erased_at, str) or not self.erased_at:
            raise ValidationError("erased_at must be the tombstone's time")

    def fields(self) -> dict[str, Any]:
        return {
            "erasure_id": self.erasure_id,
            "subject_id": self.subject_id,
            "scope": self.scope,
            "erased_at": self.erased_at,
            "galleries": list(self.galleries),
            "index": self.index,
            "total": self.total,
            "tasks": [t.to_list() for t in self.tasks],
        }

    @classmethod
    def from_fields(cls, doc: Mapping[str, Any]) -> Self:
        galleries, tasks = doc["galleries"], doc["tasks"]
        if not isinstance(galleries, list) or not isinstance(tasks, list):
            raise ValidationError("an erasure chunk's galleries and tasks are lists")
        return cls(
            doc["erasure_id"],
            doc["subject_id"],
            doc["scope"],
            doc["erased_at"],
            tuple(galleries),
            doc["index"],
            doc["total"],
            tuple(Task.from_list(t) for t in tasks),
        )


def plan_chunks(erasure_id: str, plan: Plan, chunk_size: int) -> list[ErasureChunk]:
    """The plan's tasks, in order, in chunks of at most ``chunk_size`` tasks that each fit a
    queue message; the same plan always gives the same chunks."""
    if check_positive(chunk_size, "chunk_size") > MAX_CHUNK_SIZE:
        raise ValidationError(f"chunk_size is at most {MAX_CHUNK_SIZE}")
    envelope = {
        "erasure_id": erasure_id,
        "subject_id": plan.subject_id,
        "scope": plan.scope,
        "erased_at": plan.erased_at,
        "galleries": plan.galleries,
        "index": 0,
        "total": 0,
        "tasks": [],
    }
    groups = pack(
        plan.tasks,
        chunk_size,
        envelope=len(encode(ERASURE_CHUNK, 1, envelope)) + 64,
        cost=lambda task: len(compact_json(task.to_list())) + 1,
        limit=MAX_MESSAGE_BYTES,
    )
    return [
        ErasureChunk(
            erasure_id,
            plan.subject_id,
            plan.scope,
            plan.erased_at,
            tuple(plan.galleries),
            index,
            len(groups),
            tuple(group),
        )
        for index, group in enumerate(groups)
    ]


class ErasureJobs:
    """Erasures run by the jobs workers: submit (the API), run and run chunks (a worker),
    status (``GET /erasures/{erasure_id}``)."""

    def __init__(
        self,
        eraser: Eraser,
        queue_url: str | None,
        *,
        sqs: SQSClient | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.eraser = eraser
        self.objects = eraser.objects
        self.queue_url = queue_url
        self.sqs = sqs if sqs is not None else eraser.sqs
        self.chunk_size = chunk_size

    # -- the API's side ---------------------------------------------------------------------

    def submit(self, plan: Plan) -> dict[str, Any]:
        """Keep the plan and queue it; the ``queued`` state (the tombstone is recorded)."""
        erasure_id = uuid.uuid4().hex
        request = ErasureRequest(erasure_id, plan.subject_id, plan.scope)
        self._put(layout.erasure_work_prefix(erasure_id) + "plan.json", _plan_doc(plan))
        status = {
            "erasure_id": erasure_id,
            "status": QUEUED,
            "scope": plan.scope,
            "erased_at": plan.erased_at,
            "queued_at": utc_now(),
        }
        self._put_status(erasure_id, status)
        self._send([request.to_message()])
        return status

    def status(self, erasure_id: str) -> dict[str, Any]:
        """``queued``; ``running`` with its chunks and how many are done; ``done`` with the
        receipt; or ``failed`` with the error. A collection's deletion run by the workers
        (:mod:`facegate.batch.collection_deletion`) keeps its state here too: ``running``
        with ``subjects_erased``, ``done`` with its receipt."""
        state = self._status(erasure_id)
        if state is None:
            raise UnknownErasureError(f"no erasure {erasure_id!r}")
        if state.get("status") == RUNNING and "chunks" in state:  # not a collection's
            state["chunks_done"] = len(self.objects.list_keys(_done_prefix(erasure_id)))
        return state

    # -- the workers' side ------------------------------------------------------------------

    def run(self, request: ErasureRequest) -> None:
        """Split the request's plan into chunks and send them (a single chunk: run it)."""
        state = self._status(request.erasure_id)
        if state is not None and state.get("status") in (DONE, FAILED):
            return
        try:
            plan = self._plan(request)
            chunks = plan_chunks(request.erasure_id, plan, self.chunk_size)
        except StorageError:
            raise
        except FaceGateError as exc:
            self._failed(request.erasure_id, request.scope, exc)
            return
        running = {
            "erasure_id": request.erasure_id,
            "status": RUNNING,
            "scope": plan.scope,
            "erased_at": plan.erased_at,
            "chunks": len(chunks),
            "started_at": utc_now(),
        }
        self._put_status(request.erasure_id, running)
        if len(chunks) == 1:
            self.run_chunk(chunks[0])
        else:
            self._send([c.to_message() for c in chunks])

    def run_chunk(self, chunk: ErasureChunk) -> Receipt | None:
        """Run the chunk's tasks (skipping those a retried chunk's partial receipt records),
        mark it done, and merge the receipt if it was the last; the receipt when merged."""
        state = self._status(chunk.erasure_id)
        if state is not None and state.get("status") in (DONE, FAILED):
            return None
        work = layout.erasure_work_prefix(chunk.erasure_id)
        marker = f"{_done_prefix(chunk.erasure_id)}{chunk.index}"
        if not self.objects.exists(marker):
            try:
                self._run_tasks(chunk, f"{work}chunks/{chunk.index}.json")
            except StorageError:
                raise
            except FaceGateError as exc:
                self._failed(chunk.erasure_id, chunk.scope, exc)
                return None
            self._put(marker, {"index": chunk.index})
        if len(self.objects.list_keys(_done_prefix(chunk.erasure_id))) < chunk.total:
            return None
        return self._merge(chunk)

    def _run_tasks(self, chunk: ErasureChunk, partial_key: str) -> None:
        partial = self._get(partial_key) or {"done": [], "removed": [], "remaining": []}
        done = set(partial["done"])
        for number, task in enumerate(chunk.tasks):
            if number in done:
                continue
            removed, remaining = self.eraser.run_task(
                chunk.subject_id, chunk.scope, chunk.galleries, task
            )
            if removed or remaining:
                partial["done"].append(number)
                partial["removed"].extend(asdict(r) for r in removed)
                partial["remaining"].extend(remaining)
                self._put(partial_key, partial)

    def _merge(self, chunk: ErasureChunk) -> Receipt:
        """Every chunk's partial receipt, in chunk order, as the erasure's receipt; then the
        work files go."""
        work = layout.erasure_work_prefix(chunk.erasure_id)
        receipt = Receipt(chunk.subject_id, chunk.scope, chunk.erased_at, list(chunk.galleries))
        for index in range(chunk.total):
            partial = self._get(f"{work}chunks/{index}.json") or {}
            receipt.removed.extend(Removed.from_dict(r) for r in partial.get("removed", []))
            receipt.remaining.extend(partial.get("remaining", []))
        self.eraser.finish(receipt)
        done = {
            "erasure_id": chunk.erasure_id,
            "status": DONE,
            "finished_at": utc_now(),
            "chunks": chunk.total,
            "receipt": receipt.to_dict(),
        }
        self._put_status(chunk.erasure_id, done)
        self.objects.delete_versions(self.objects.versions(work))
        return receipt

    def _plan(self, request: ErasureRequest) -> Plan:
        """The plan the API kept; planned again (the tombstone recorded again) when it is
        gone, so that a request whose plan expired still erases."""
        doc = self._get(layout.erasure_work_prefix(request.erasure_id) + "plan.json")
        if doc is None:
            return self.eraser.prepare(request.subject_id, request.scope)
        try:
            return Plan(
                request.subject_id,
                request.scope,
                str(doc["erased_at"]),
                [validate_id(g, "gallery") for g in doc["galleries"]],
                [Task.from_list(t) for t in doc["tasks"]],
                int(doc["objects"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValidationError("the erasure's plan cannot be read") from exc

    # -- state ------------------------------------------------------------------------------

    def _failed(self, erasure_id: str, scope: str, exc: FaceGateError) -> None:
        """A failure no retry fixes, as the erasure's state (the tombstone stays)."""
        failed = {"erasure_id": erasure_id, "status": FAILED, "scope": scope}
        self._put_status(erasure_id, failed | {"error": exc.to_dict()})

    def _status(self, erasure_id: str) -> dict[str, Any] | None:
        return self._get(layout.erasure_status_key(erasure_id))

    def _put_status(self, erasure_id: str, doc: dict[str, Any]) -> None:
        self._put(layout.erasure_status_key(erasure_id), doc)

    def _get(self, key: str) -> dict[str, Any] | None:
        return self.objects.get_json(key, "an erasure's state")

    def _put(self, key: str, doc: Mapping[str, Any]) -> None:
        self.objects.put_json(key, doc)

    def _send(self, bodies: Sequence[str]) -> None:
        if self.sqs is None:
            raise StorageError("this eraser was built without a queue client")
        send_messages(self.sqs, self.queue_url, bodies, "erasure messages")


def _done_prefix(erasure_id: str) -> str:
    return f"{layout.erasure_work_prefix(erasure_id)}done/"


def _plan_doc(plan: Plan) -> dict[str, Any]:
    return {
        "subject_id": plan.subject_id,
        "scope": plan.scope,
        "erased_at": plan.erased_at,
        "galleries": plan.galleries,
        "tasks": [t.to_list() for t in plan.tasks],
        "objects": plan.objects,
    }
