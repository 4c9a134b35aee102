"""Enrolled subjects and their face embeddings on DynamoDB: the subject store. Torch-free.

Records, item layout and cursors are in :mod:`facegate.storage.subject_items`; this module
holds the table definition and the reads and writes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from botocore.exceptions import ClientError

from facegate.common import iso_micros, utc_now, validate_id
from facegate.errors import (
    CollectionDeletingError,
    ModelMismatchError,
    StorageError,
    UnknownCollectionError,
    UnknownSubjectError,
    ValidationError,
)
from facegate.gallery.format import validate_embeddings
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.face_index import FaceIndex, FaceIndexCache
from facegate.storage.keys import DEFAULT_COLLECTION
from facegate.storage.subject_items import (
    FACE_SK,
    FACES_INDEX,
    FACES_PK,
    FACES_SK,
    META_SK,
    StoredFace,
    Subject,
    decode_cursor,
    encode_cursor,
    face_from_item,
    face_item,
    subject_from_item,
    subject_key,
    subject_kind,
    subject_pk,
    validate_metadata,
)
from facegate.storage.tombstones import EnrolmentFence

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

__all__ = [
    "MAX_FACES_PER_PUT",
    "MAX_LIST_LIMIT",
    "SUBJECTS_INDEX",
    "StoredFace",
    "Subject",
    "SubjectStore",
    "create_table",
    "table_definition",
    "validate_metadata",
]

#: The sparse index that lists subjects: only META items carry its partition key.
SUBJECTS_INDEX = "subjects"
#: A DynamoDB transaction holds at most 100 items; two of them are the subject's META item
#: and the check of its deletion fence (:class:`~facegate.storage.tombstones.EnrolmentFence`).
MAX_FACES_PER_PUT = 98
MAX_LIST_LIMIT = 1000

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_BATCH_WRITE_SIZE = 25
_BATCH_GET_SIZE = 100
_BATCH_WRITE_ATTEMPTS = 5


# --------------------------------------------------------------------------------------
# DynamoDB: table
# --------------------------------------------------------------------------------------


def table_definition(name: str) -> dict[str, Any]:
    """The exact ``create_table`` kwargs of the subjects table.

    The one definition that the SAM template is checked against and the local stack and tests
    create from. On-demand billing because enrolment traffic is bursty; encryption with the
    AWS-managed KMS key because the table holds biometric templates. The ``subjects`` index
    is sparse (only META items have ``kind``), so listing reads subjects and never faces,
    sorted by id; so is the ``faces`` index (only face items have its keys), which holds
    just the embeddings, so 1:N search reads faces and nothing else
    (:mod:`facegate.storage.face_index`).
    """
    return {
        "TableName": name,
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "kind", "AttributeType": "S"},
            {"AttributeName": "subject_id", "AttributeType": "S"},
            {"AttributeName": FACES_PK, "AttributeType": "S"},
            {"AttributeName": FACES_SK, "AttributeType": "S"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": SUBJECTS_INDEX,
                "KeySchema": [
                    {"AttributeName": "kind", "KeyType": "HASH"},
                    {"AttributeName": "subject_id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": FACES_INDEX,
                "KeySchema": [
                    {"AttributeName": FACES_PK, "KeyType": "HASH"},
                    {"AttributeName": FACES_SK, "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["embedding", "dim"],
                },
            },
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


def create_table(client: DynamoDBClient, name: str) -> None:
    """Create the subjects table and wait until it is active (tests and the local stack)."""
    with aws_errors(f"creating table {name}"):
        client.create_table(**table_definition(name))
        client.get_waiter("table_exists").wait(TableName=name)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def _stamped_faces(
    faces: Sequence[StoredFace], model_id: str, weights_sha256: str, now: str
) -> list[StoredFace]:
    """Check a batch of faces and stamp it with the model; refuse faces of another model."""
    if not 1 <= len(faces) <= MAX_FACES_PER_PUT:
        raise ValidationError(f"put 1 to {MAX_FACES_PER_PUT} faces at a time, got {len(faces)}")
    ids = [validate_id(f.face_id, "face_id") for f in faces]
    if len(set(ids)) != len(ids):
        raise ValidationError("face ids must be unique within one call")
    for face in faces:
        if face.model_id not in (None, model_id) or face.weights_sha256 not in (
            None,
            weights_sha256,
        ):
            raise ModelMismatchError(
                f"face {face.face_id!r} carries another model or weights than {model_id!r}"
            )
        if not isinstance(face.image_key, str) or not face.image_key:
            raise ValidationError(f"face {face.face_id!r} has no image_key")
        if face.bbox is not None and len(face.bbox) != 4:
            raise ValidationError(f"face {face.face_id!r}: bbox must be (x1, y1, x2, y2)")
    return [
        replace(f, model_id=model_id, weights_sha256=weights_sha256, created_at=now) for f in faces
    ]


def _face_embeddings(faces: Sequence[StoredFace]) -> np.ndarray:
    """``(N, D) float32``: one dim for the batch, finite, unit length (as galleries require)."""
    vectors = [np.asarray(f.embedding) for f in faces]
    if any(v.ndim != 1 for v in vectors) or len({v.shape[0] for v in vectors}) != 1:
        raise ValidationError("embeddings must be 1-D vectors of one dim")
    return validate_embeddings(np.stack(vectors))


# --------------------------------------------------------------------------------------
# DynamoDB: the store
# --------------------------------------------------------------------------------------


class SubjectStore:
    """Enrolled subjects and their face embeddings in one DynamoDB table.

    ``client`` is a low-level DynamoDB client (see :func:`~facegate.storage.clients.aws_client`),
    not the resource API, so that binary embeddings stay ``bytes`` and numbers round-trip
    exactly (:mod:`facegate.storage.dynamo` encodes them; the layout is in
    :mod:`facegate.storage.subject_items`).
    Reads of one subject are strongly consistent: a verify right after an enrol sees the faces.
    """

    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        collection: str = DEFAULT_COLLECTION,
        cache: FaceIndexCache | None = None,
    ) -> None:
        self._db = client
        self.table = table
        #: The collection this store reads and writes: subjects of another are not seen.
        self.collection = validate_id(collection, "collection")
        #: Its faces for 1:N search; the cache is the process's, shared by its collections.
        self.faces = FaceIndex(client, table, self.collection, cache or FaceIndexCache())

    @classmethod
    def from_settings(cls, settings: Settings) -> SubjectStore:
        return cls(aws_client("dynamodb", settings), settings.table)

    def in_collection(self, collection: str) -> SubjectStore:
        """The same table's subjects of ``collection``."""
        return SubjectStore(self._db, self.table, collection, self.faces.cache)

    # -- writes ---------------------------------------------------------------------

    def put_faces(
        self,
        subject_id: str,
        faces: Sequence[StoredFace],
        model_id: str,
        *,
        weights_sha256: str,
        metadata: Mapping[str, str] | None = None,
    ) -> Subject:
        """:meth:`write_faces`, then the subject as stored."""
        self.write_faces(
            subject_id, faces, model_id, weights_sha256=weights_sha256, metadata=metadata
        )
        return self.get_subject(subject_id)

    def write_faces(
        self,
        subject_id: str,
        faces: Sequence[StoredFace],
        model_id: str,
        *,
        weights_sha256: str,
        metadata: Mapping[str, str] | None = None,
        fence: EnrolmentFence | None = None,
        guard: TransactWriteItemTypeDef | None = None,
    ) -> None:
        """Add faces to a subject, creating it if absent, in one transaction: when it raises,
        nothing was written (barring an answer lost after a commit), so an enrolment that
        fails here erases its photos; it reads the subject back only once this returned.

        All or nothing: the subject's META item and every face are written together, each face
        on the condition that its id is new (an existing face is never overwritten:
        :class:`ValidationError`), the META item on the condition that the subject is new or
        already uses ``model_id`` (else :class:`ModelMismatchError`: embeddings of different
        models must never be compared). ``metadata``, when given, replaces the stored one.
        With a ``fence``, the transaction also checks that no DELETE of the subject began
        since the fence was read (else :class:`~facegate.errors.SubjectDeletedError`). With a
        ``guard`` (:func:`~facegate.storage.collections.collection_guard`), that the
        collection exists and is not being deleted (else
        :class:`~facegate.errors.CollectionDeletingError`, or
        :class:`~facegate.errors.UnknownCollectionError` when it is gone).
        """
        validate_id(subject_id)
        if not isinstance(model_id, str) or not model_id:
            raise ValidationError("model_id must be a non-empty string")
        if not isinstance(weights_sha256, str) or not _SHA256_RE.match(weights_sha256):
            raise ValidationError("weights_sha256 must be 64 lowercase hex characters")
        meta = None if metadata is None else validate_metadata(metadata)
        now = utc_now()
        # Faces to the microsecond, as tombstones are: a face enrolled after an erasure in
        # the same second must not read as older than it (and be dropped from an export).
        stamped = _stamped_faces(faces, model_id, weights_sha256, iso_micros(datetime.now(UTC)))
        embeddings = _face_embeddings(stamped)
        items: list[TransactWriteItemTypeDef] = [
            self._meta_update(subject_id, model_id, len(stamped), now, meta)
        ]
        items += [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": face_item(subject_id, self.collection, face, emb),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for face, emb in zip(stamped, embeddings, strict=True)
        ]
        if fence is not None:
            items.append(fence.condition_check())
        if guard is not None:
            items.append(guard)
        with aws_errors(f"enrolling subject {subject_id}"):
            try:
                self._db.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                self._raise_refusal(
                    exc, subject_id, model_id, stamped, fence, self.collection if guard else None
                )
        self.faces.changed()

    def _meta_update(
        self,
        subject_id: str,
        model_id: str,
        added: int,
        now: str,
        metadata: dict[str, str] | None,
    ) -> TransactWriteItemTypeDef:
        sets = [
            "#subject = :subject",
            "#kind = :kind",
            "#model = :model",
            "#created = if_not_exists(#created, :now)",
            "#updated = :now",
        ]
        names = {
            "#subject": "subject_id",
            "#kind": "kind",
            "#model": "model_id",
            "#created": "created_at",
            "#updated": "updated_at",
            "#count": "face_count",
        }
        values: dict[str, Any] = {
            ":subject": subject_id,
            ":kind": subject_kind(self.collection),
            ":model": model_id,
            ":now": now,
            ":added": added,
            ":zero": 0,
        }
        if metadata is not None:
            sets.append("#metadata = :metadata")
            names["#metadata"] = "metadata"
            values[":metadata"] = metadata
        return {
            "Update": {
                "TableName": self.table,
                "Key": subject_key(subject_id, self.collection),
                "UpdateExpression": f"SET {', '.join(sets)} ADD #count :added",
                "ConditionExpression": (
                    "attribute_not_exists(pk) OR #model = :model OR #count = :zero"
                ),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": to_attributes(values),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    @staticmethod
    def _raise_refusal(
        exc: ClientError,
        subject_id: str,
        model_id: str,
        faces: Sequence[StoredFace],
        fence: EnrolmentFence | None,
        collection: str | None = None,
    ) -> None:
        """Name the condition that cancelled the transaction; anything else is a StorageError.
        A collection being deleted is named first, then a DELETE that moved the fence:
        whatever else failed, what the enrolment wrote to is going."""
        reasons = exc.response.get("CancellationReasons", [])
        failed = [r.get("Code") == "ConditionalCheckFailed" for r in reasons]
        guarded = collection is not None
        expected = len(faces) + 1 + (fence is not None) + guarded
        if collection is not None and len(failed) == expected and failed[-1]:
            if reasons[-1].get("Item"):
                raise CollectionDeletingError.named(collection) from exc
            raise UnknownCollectionError.named(collection) from exc
        fence_at = len(faces) + 1
        if fence is not None and len(failed) == expected and failed[fence_at]:
            raise fence.refused() from exc
        if failed and failed[0]:
            stored = from_attributes(reasons[0].get("Item", {})).get("model_id", "another model")
            raise ModelMismatchError(
                f"subject {subject_id!r} is enrolled with {stored!r}, not {model_id!r}"
            ) from exc
        taken = [f.face_id for f, hit in zip(faces, failed[1:fence_at], strict=False) if hit]
        if taken:
            raise ValidationError(
                f"subject {subject_id!r} already has face ids {taken}: faces are never overwritten"
            ) from exc
        raise exc

    def delete_subject(self, subject_id: str) -> list[str]:
        """Delete every item of a subject; return the image keys of its faces.

        The photos themselves are the caller's to delete (:meth:`PhotoStore.delete_subject`).
        Faces go first and the META item last, so that an interrupted delete leaves a subject
        that still exists and can be deleted again, never orphaned faces.
        """
        items = self._subject_items(subject_id, image_keys_only=True)
        faces = [
            subject_key(subject_id, self.collection, i["sk"]) for i in items if i["sk"] != META_SK
        ]
        for start in range(0, len(faces), _BATCH_WRITE_SIZE):
            self._batch_delete(faces[start : start + _BATCH_WRITE_SIZE])
        self._batch_delete([subject_key(subject_id, self.collection)])
        self.faces.changed(deletion=True)
        return [i["image_key"] for i in items if "image_key" in i]

    def _batch_delete(self, keys: list[dict[str, Any]]) -> None:
        """BatchWriteItem may leave items unprocessed under throttling: retry those, backing off."""
        pending: dict[str, Any] = {self.table: [{"DeleteRequest": {"Key": k}} for k in keys]}
        for attempt in range(_BATCH_WRITE_ATTEMPTS):
            if not pending.get(self.table):
                return
            if attempt:
                time.sleep(0.05 * 2**attempt)
            with aws_errors(f"deleting from {self.table}"):
                pending = self._db.batch_write_item(RequestItems=pending).get(
                    "UnprocessedItems", {}
                )
        if pending.get(self.table):
            raise StorageError(f"{len(pending[self.table])} items left undeleted (throttled)")

    # -- reads ----------------------------------------------------------------------

    def get_subject(self, subject_id: str) -> Subject:
        """The subject's META item; :class:`UnknownSubjectError` if it is not enrolled."""
        validate_id(subject_id)
        with aws_errors(f"reading subject {subject_id}"):
            item = self._db.get_item(
                TableName=self.table,
                Key=subject_key(subject_id, self.collection),
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            raise UnknownSubjectError(f"unknown subject {subject_id!r}")
        return subject_from_item(from_attributes(item))

    def get_embeddings(self, subject_id: str) -> tuple[np.ndarray, list[StoredFace]]:
        """All faces of a subject, ordered by face id, and their ``(N, D) float32`` embeddings."""
        items = self._subject_items(subject_id)
        faces = [face_from_item(i) for i in items if i["sk"].startswith(FACE_SK)]
        if not faces:
            return np.empty((0, 0), dtype=np.float32), []
        return np.stack([f.embedding for f in faces]), faces

    def image_keys(self, subject_id: str) -> set[str]:
        """The photo keys the subject's face items name; empty when it has no items at all.

        What the orphan sweep (:mod:`facegate.storage.orphans`) keeps. Read consistently, so
        an enrolment that committed before the call is seen; any ``FACE#`` item counts, with
        or without a META item (a DELETE interrupted midway still references its photos).
        """
        items = self._subject_items(subject_id, image_keys_only=True, must_exist=False)
        return {
            str(i["image_key"]) for i in items if i["sk"].startswith(FACE_SK) and "image_key" in i
        }

    def _subject_items(
        self, subject_id: str, *, image_keys_only: bool = False, must_exist: bool = True
    ) -> list[dict[str, Any]]:
        """Every item under the subject's partition key, decoded; :class:`UnknownSubjectError`
        if there is no META item (unless not ``must_exist``)."""
        validate_id(subject_id)
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": to_attributes(
                {":pk": subject_pk(subject_id, self.collection)}
            ),
            "ConsistentRead": True,
        }
        if image_keys_only:
            kwargs["ProjectionExpression"] = "pk, sk, #image_key"
            kwargs["ExpressionAttributeNames"] = {"#image_key": "image_key"}
        with aws_errors(f"reading subject {subject_id}"):
            pages = self._db.get_paginator("query").paginate(**kwargs)
            items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
        if must_exist and not any(i["sk"] == META_SK for i in items):
            raise UnknownSubjectError(f"unknown subject {subject_id!r}")
        return items

    def list_subjects(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[Subject], str | None]:
        """One page of subjects sorted by id, and the cursor of the next page (None at the end).

        Reads the sparse ``subjects`` index, which is eventually consistent: a subject enrolled
        a moment ago may appear on the next call. A page can be short, even empty, with a
        cursor still given; only a ``None`` cursor means the end.
        """
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise ValidationError(f"limit must be an int in 1..{MAX_LIST_LIMIT}, got {limit!r}")
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": SUBJECTS_INDEX,
            "KeyConditionExpression": "#kind = :kind",
            "ExpressionAttributeNames": {"#kind": "kind"},
            "ExpressionAttributeValues": to_attributes({":kind": subject_kind(self.collection)}),
            "Limit": limit,
        }
        if cursor is not None:
            kwargs["ExclusiveStartKey"] = decode_cursor(cursor)
        with aws_errors("listing subjects"):
            page = self._db.query(**kwargs)
        subjects = [subject_from_item(from_attributes(i)) for i in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return subjects, encode_cursor(last) if last else None

    def subject_ids(self) -> list[str]:
        """Every subject of the collection with any item, sorted: a strongly consistent scan
        of the table (an enrolment committed before the call is seen, unlike the
        ``subjects`` index), for the collection's deletion. A subject whose DELETE was
        interrupted (faces left, no META item) is listed too: it must go with the rest."""
        prefix = f"{subject_kind(self.collection)}#"
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :pk)",
            "ProjectionExpression": "pk",
            "ExpressionAttributeValues": to_attributes({":pk": prefix}),
            "ConsistentRead": True,
        }
        with aws_errors("listing a collection's subjects"):
            pages = self._db.get_paginator("scan").paginate(**kwargs)
            keys = {i["pk"]["S"] for page in pages for i in page.get("Items", [])}
        return sorted(k.removeprefix(prefix) for k in keys)

    def all_faces(self) -> list[tuple[str, StoredFace]]:
        """Every enrolled face of the collection with its subject id, sorted by subject and
        face: a strongly consistent scan (a collection's export as a gallery)."""
        prefix = f"{subject_kind(self.collection)}#"
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(pk, :pk) AND begins_with(sk, :face)",
            "ExpressionAttributeValues": to_attributes({":pk": prefix, ":face": FACE_SK}),
            "ConsistentRead": True,
        }
        with aws_errors("reading a collection's faces"):
            pages = self._db.get_paginator("scan").paginate(**kwargs)
            items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
        faces = [(str(i["pk"]).removeprefix(prefix), face_from_item(i)) for i in items]
        return sorted(faces, key=lambda pair: (pair[0], pair[1].face_id))

    def all_embeddings(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """Every enrolled face of ``model_id``: ``(subject_ids, (N, D) float32)`` for 1:N search.

        One row per face, so a subject id repeats once per face. From the ``faces`` index,
        through the process's cache (:meth:`FaceIndex.embeddings`): never a scan of the
        table, whatever else it holds. Eventually consistent: confirm the subjects a search
        names with :meth:`existing`. With no faces the array is ``(0, 0)``.
        """
        return self.faces.embeddings(model_id)

    def existing(self, subject_ids: Sequence[str]) -> set[str]:
        """Which of ``subject_ids`` are enrolled now: their META items, read strongly
        consistently (a search's candidates, before they are named)."""
        wanted = sorted(set(subject_ids))
        found: set[str] = set()
        prefix = f"{subject_kind(self.collection)}#"
        for start in range(0, len(wanted), _BATCH_GET_SIZE):
            chunk = wanted[start : start + _BATCH_GET_SIZE]
            keys = [subject_key(s, self.collection) for s in chunk]
            request: dict[str, Any] = {
                self.table: {"Keys": keys, "ConsistentRead": True, "ProjectionExpression": "pk"}
            }
            for attempt in range(_BATCH_WRITE_ATTEMPTS):
                if attempt:
                    time.sleep(0.05 * 2**attempt)
                with aws_errors("confirming subjects"):
                    answer = self._db.batch_get_item(RequestItems=request)
                found |= {
                    i["pk"]["S"].removeprefix(prefix)
                    for i in answer.get("Responses", {}).get(self.table, [])
                }
                request = answer.get("UnprocessedKeys") or {}
                if not request.get(self.table):
                    break
            else:
                raise StorageError("subjects left unconfirmed (throttled)")
        return found
