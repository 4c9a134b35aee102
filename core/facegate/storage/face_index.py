"""The enrolled faces of a collection for 1:N search, without scanning the table. Torch-free.

The subjects table also holds the ingest ledger (an item per photo or chunk), jobs and
tombstones: a Scan for the faces would read all of it on every ``/identify``. Instead:

- **The ``faces`` index.** Every ``FACE#`` item carries ``faces_pk = FACES#<collection>#<model>``
  and ``faces_sk = <created_at>#<subject>#<face>`` (:func:`faces_index_keys`), the keys of a
  sparse global secondary index that projects the embedding only: a Query of one partition
  reads the faces of one collection and model, nothing else, sorted by enrolment time.
  DynamoDB keeps it in step with the items, so a deleted face leaves it with its item.
- **The version item** (``pk = FACEINDEX#<collection>``, ``sk = VERSION``): two counters,
  ``changes`` (every enrolment and deletion) and ``deletions``, added to after each write
  commits (:meth:`FaceIndex.changed`). They are not in the enrolment's transaction: that
  would make every enrolment of a collection contend for one item.
- **A cache per warm function** (:class:`FaceIndexCache`): an ``/identify`` reads the
  version item (one strongly consistent GetItem) and searches the matrix it holds when
  nothing changed; after enrolments only, it queries the faces enrolled since the newest it
  holds (less a margin for the writers' clocks); after a deletion, or when the entry is old,
  it reads the partition again.

A global secondary index is eventually consistent (typically well under a second): a face
enrolled or deleted just before the counters moved may be missing from, or still in, what
the Query returns. The first is read again on the next incremental refresh (within
:data:`REFRESH_SECONDS`, the margin covering it). For the second, the service confirms every
subject it is about to name with a consistent read (:meth:`SubjectStore.existing`) and drops
this cache's entry when one is gone, so a deleted person is never named.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from facegate.common import iso_micros, parse_instant
from facegate.errors import ModelMismatchError
from facegate.storage.aws_errors import aws_errors
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.subject_items import (
    FACES_INDEX,
    FACES_PK,
    FACES_SK,
    decode_embedding,
    faces_partition,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_VERSION_PK = "FACEINDEX#"
_VERSION_SK = "VERSION"
#: An entry is refreshed (incrementally, unless a deletion happened) once this old, even
#: when the counters did not move: it picks up a face the index showed late.
REFRESH_SECONDS = 30.0
#: ... and read whole once this old, whatever happened.
RELOAD_SECONDS = 900.0
#: How far before the newest face it holds an incremental refresh starts: enrolment stamps
#: come from many functions' clocks, and the index may show a face late.
CLOCK_MARGIN = timedelta(seconds=60)


@dataclass(frozen=True)
class Version:
    """The version item's counters (0 and 0 when no face was ever written)."""

    changes: int = 0
    deletions: int = 0


@dataclass
class _Entry:
    """What a warm function holds of one collection's faces of one model."""

    version: Version
    loaded: float
    refreshed: float
    #: ``faces_sk`` of each row, in row order; the set, to skip rows already held.
    keys: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)
    subject_ids: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    matrix: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))

    @property
    def newest(self) -> str | None:
        return max(self.keys) if self.keys else None

    def add(self, items: list[dict[str, Any]]) -> None:
        fresh = [i for i in items if i[FACES_SK] not in self.held]
        for item in fresh:
            key = str(item[FACES_SK])
            self.keys.append(key)
            self.held.add(key)
            self.subject_ids.append(key.split("#")[1])
            self.rows.append(decode_embedding(item))
        if fresh or not self.matrix.size:
            dims = {len(r) for r in self.rows}
            if len(dims) > 1:
                raise ModelMismatchError("faces of one model have different embedding dims")
            self.matrix = np.stack(self.rows) if self.rows else np.empty((0, 0), dtype=np.float32)


class FaceIndexCache:
    """The entries of one process, by (table, collection, model): shared by every
    :class:`FaceIndex` of the process's subject store and its collections."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str, str], _Entry] = {}
        self._lock = threading.Lock()
        #: Held while an entry is read or refreshed: two requests of one process (the
        #: local API's threads) must not add the same faces twice.
        self.refreshing = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> _Entry | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[str, str, str], entry: _Entry) -> None:
        with self._lock:
            self._entries[key] = entry

    def drop(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)


class FaceIndex:
    """One collection's faces through the ``faces`` index, its version item and a cache."""

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        collection: str,
        cache: FaceIndexCache,
        clock: Any = time.monotonic,
    ) -> None:
        self._db = client
        self.table = table
        self.collection = collection
        self.cache = cache
        self._clock = clock

    # -- the version item ------------------------------------------------------------

    def _version_key(self) -> dict[str, Any]:
        return to_attributes({"pk": _VERSION_PK + self.collection, "sk": _VERSION_SK})

    def changed(self, *, deletion: bool = False) -> None:
        """Count a committed enrolment (or, with ``deletion``, a deletion) of the collection."""
        update = "ADD changes :one, deletions :one" if deletion else "ADD changes :one"
        with aws_errors("counting a change of the enrolled faces"):
            self._db.update_item(
                TableName=self.table,
                Key=self._version_key(),
                UpdateExpression=update,
                ExpressionAttributeValues=to_attributes({":one": 1}),
            )

    def version(self) -> Version:
        """The counters, read strongly consistently."""
        with aws_errors("reading the enrolled faces' version"):
            item = self._db.get_item(
                TableName=self.table, Key=self._version_key(), ConsistentRead=True
            ).get("Item")
        if not item:
            return Version()
        values = from_attributes(item)
        return Version(int(values.get("changes", 0)), int(values.get("deletions", 0)))

    # -- the faces -------------------------------------------------------------------

    def query(self, model_id: str, since: str | None = None) -> list[dict[str, Any]]:
        """The index's faces of ``model_id`` (enrolled at or after ``since``, an ISO stamp),
        decoded: ``faces_sk``, ``embedding``, ``dim``."""
        condition = "#pk = :pk"
        values: dict[str, Any] = {":pk": faces_partition(self.collection, model_id)}
        if since is not None:
            condition += " AND #sk >= :since"
            values[":since"] = since
        with aws_errors("querying the enrolled faces"):
            pages = self._db.get_paginator("query").paginate(
                TableName=self.table,
                IndexName=FACES_INDEX,
                KeyConditionExpression=condition,
                ProjectionExpression="#sk, embedding, dim",
                ExpressionAttributeNames={"#pk": FACES_PK, "#sk": FACES_SK},
                ExpressionAttributeValues=to_attributes(values),
            )
            return [from_attributes(i) for page in pages for i in page.get("Items", [])]

    def embeddings(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """``(subject_ids, (N, D) float32)``, one row per face, for 1:N search; ``(0, 0)``
        with no faces. From the cache when the version item says nothing changed."""
        key = (self.table, self.collection, model_id)
        version = self.version()
        with self.cache.refreshing:
            now = self._clock()
            entry = self.cache.get(key)
            if entry is not None and now - entry.loaded > RELOAD_SECONDS:
                entry = None
            if entry is not None and entry.version.deletions != version.deletions:
                entry = None
            if entry is None:
                entry = _Entry(version=version, loaded=now, refreshed=now)
                entry.add(self.query(model_id))
            elif entry.version != version or now - entry.refreshed > REFRESH_SECONDS:
                newest = entry.newest
                since = None if newest is None else _before(newest.split("#")[0], CLOCK_MARGIN)
                entry.add(self.query(model_id, since))
                entry.version = version
                entry.refreshed = now
            self.cache.put(key, entry)
            return list(entry.subject_ids), entry.matrix

    def drop_cached(self, model_id: str) -> None:
        """Forget this process's entry: the next search reads the index whole."""
        self.cache.drop((self.table, self.collection, model_id))


def _before(stamp: str, margin: timedelta) -> str:
    return iso_micros(parse_instant(stamp, "created_at") - margin)


__all__ = [
    "CLOCK_MARGIN",
    "REFRESH_SECONDS",
    "RELOAD_SECONDS",
    "FaceIndex",
    "FaceIndexCache",
    "Version",
]
