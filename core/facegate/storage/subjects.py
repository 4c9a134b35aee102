"""Enrolled subjects and their face embeddings on DynamoDB. Torch-free."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from botocore.client import BaseClient
from botocore.exceptions import ClientError

from facegate.common import utc_now, validate_id
from facegate.errors import (
    ModelMismatchError,
    StorageError,
    UnknownSubjectError,
    ValidationError,
)
from facegate.gallery.format import validate_embeddings
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import dynamo_number

#: The sparse index that lists subjects: only META items carry its partition key.
SUBJECTS_INDEX = "subjects"
#: A DynamoDB transaction holds at most 100 items; one of them is the subject's META item.
MAX_FACES_PER_PUT = 99
MAX_LIST_LIMIT = 1000
#: Display metadata is for people, not a document store.
MAX_METADATA_ENTRIES = 32
MAX_METADATA_CHARS = 1024

_SUBJECT_KIND = "SUBJECT"
_META_SK = "META"
_FACE_SK = "FACE#"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CURSOR_KEYS = frozenset({"pk", "sk", "kind", "subject_id"})
_BATCH_WRITE_SIZE = 25
_BATCH_WRITE_ATTEMPTS = 5


# --------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """An enrolled person. Timestamps are ISO-8601 UTC (``...Z``); ``metadata`` is for display."""

    subject_id: str
    model_id: str
    face_count: int
    created_at: str
    updated_at: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "subject_id": self.subject_id,
            "model_id": self.model_id,
            "face_count": self.face_count,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class StoredFace:
    """One enrolled face: ``embedding`` is ``(D,) float32``, L2-normalised.

    ``bbox`` is ``(x1, y1, x2, y2)`` in the stored photo's pixels; ``image_key`` is that photo's
    S3 key. ``model_id``, ``weights_sha256`` and ``created_at`` are stamped by
    :meth:`SubjectStore.put_faces` and always set on faces read back.
    """

    face_id: str
    embedding: np.ndarray = field(repr=False, compare=False)
    image_key: str
    bbox: tuple[float, float, float, float] | None = None
    det_score: float | None = None
    model_id: str | None = None
    weights_sha256: str | None = None
    created_at: str | None = None


def _pk(subject_id: str) -> dict[str, str]:
    return {"S": f"SUBJECT#{subject_id}"}


# --------------------------------------------------------------------------------------
# DynamoDB: table
# --------------------------------------------------------------------------------------


def table_definition(name: str) -> dict[str, Any]:
    """The exact ``create_table`` kwargs of the subjects table.

    The one definition that the SAM template is checked against and the local stack and tests
    create from. On-demand billing because enrolment traffic is bursty; encryption with the
    AWS-managed KMS key because the table holds biometric templates. The ``subjects`` index
    is sparse (only META items have ``kind``), so listing reads subjects and never faces,
    sorted by id.
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
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": SUBJECTS_INDEX,
                "KeySchema": [
                    {"AttributeName": "kind", "KeyType": "HASH"},
                    {"AttributeName": "subject_id", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
        "SSESpecification": {"Enabled": True},
    }


def create_table(client: BaseClient, name: str) -> None:
    """Create the subjects table and wait until it is active (tests and the local stack)."""
    with aws_errors(f"creating table {name}"):
        client.create_table(**table_definition(name))
        client.get_waiter("table_exists").wait(TableName=name)


# --------------------------------------------------------------------------------------
# DynamoDB: items
# --------------------------------------------------------------------------------------


def _face_item(
    subject_id: str, face: StoredFace, embedding: np.ndarray
) -> dict[str, dict[str, Any]]:
    item: dict[str, dict[str, Any]] = {
        "pk": _pk(subject_id),
        "sk": {"S": _FACE_SK + face.face_id},
        "face_id": {"S": face.face_id},
        "embedding": {"B": embedding.astype("<f4").tobytes()},
        "dim": dynamo_number(int(embedding.shape[0])),
        "model_id": {"S": str(face.model_id)},
        "weights_sha256": {"S": str(face.weights_sha256)},
        "image_key": {"S": face.image_key},
        "created_at": {"S": str(face.created_at)},
    }
    if face.bbox is not None:
        item["bbox"] = {"L": [dynamo_number(float(v)) for v in face.bbox]}
    if face.det_score is not None:
        item["det_score"] = dynamo_number(float(face.det_score))
    return item


def _decode_embedding(item: Mapping[str, Any]) -> np.ndarray:
    dim = int(item["dim"]["N"])
    raw = bytes(item["embedding"]["B"])
    if len(raw) != 4 * dim:
        raise StorageError(f"stored embedding has {len(raw)} bytes, expected {4 * dim}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _face_from_item(item: Mapping[str, Any]) -> StoredFace:
    bbox = item.get("bbox")
    score = item.get("det_score")
    return StoredFace(
        face_id=item["face_id"]["S"],
        embedding=_decode_embedding(item),
        image_key=item["image_key"]["S"],
        bbox=tuple(float(v["N"]) for v in bbox["L"]) if bbox else None,
        det_score=float(score["N"]) if score else None,
        model_id=item["model_id"]["S"],
        weights_sha256=item["weights_sha256"]["S"],
        created_at=item["created_at"]["S"],
    )


def _subject_from_item(item: Mapping[str, Any]) -> Subject:
    metadata = item.get("metadata", {}).get("M", {})
    return Subject(
        subject_id=item["subject_id"]["S"],
        model_id=item["model_id"]["S"],
        face_count=int(item["face_count"]["N"]),
        created_at=item["created_at"]["S"],
        updated_at=item["updated_at"]["S"],
        metadata={k: v["S"] for k, v in metadata.items()},
    )


def validate_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise ValidationError("metadata must be a mapping of strings to strings")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise ValidationError(f"metadata has more than {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ValidationError("metadata must map non-empty strings to strings")
        if len(key) + len(value) > MAX_METADATA_CHARS:
            raise ValidationError(f"metadata entry {key[:40]!r} is too long")
    return dict(metadata)


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

    ``client`` is a low-level DynamoDB client (see :func:`facegate.aws.aws_client`); items are
    written in DynamoDB's wire format so that binary embeddings and numbers round-trip exactly.
    Reads of one subject are strongly consistent: a verify right after an enrol sees the faces.
    """

    def __init__(self, client: BaseClient, table: str) -> None:
        self._db = client
        self.table = table

    @classmethod
    def from_settings(cls, settings: Settings) -> SubjectStore:
        return cls(aws_client("dynamodb", settings), settings.table)

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
        """Add faces to a subject, creating it if absent, in one transaction; return the subject.

        All or nothing: the subject's META item and every face are written together, each face
        on the condition that its id is new (an existing face is never overwritten:
        :class:`ValidationError`), the META item on the condition that the subject is new or
        already uses ``model_id`` (else :class:`ModelMismatchError`: embeddings of different
        models must never be compared). ``metadata``, when given, replaces the stored one.
        """
        validate_id(subject_id)
        if not isinstance(model_id, str) or not model_id:
            raise ValidationError("model_id must be a non-empty string")
        if not isinstance(weights_sha256, str) or not _SHA256_RE.match(weights_sha256):
            raise ValidationError("weights_sha256 must be 64 lowercase hex characters")
        meta = None if metadata is None else validate_metadata(metadata)
        now = utc_now()
        stamped = _stamped_faces(faces, model_id, weights_sha256, now)
        embeddings = _face_embeddings(stamped)
        items = [self._meta_update(subject_id, model_id, len(stamped), now, meta)]
        items += [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": _face_item(subject_id, face, emb),
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            for face, emb in zip(stamped, embeddings, strict=True)
        ]
        with aws_errors(f"enrolling subject {subject_id}"):
            try:
                self._db.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                self._raise_refusal(exc, subject_id, model_id, stamped)
        return self.get_subject(subject_id)

    def _meta_update(
        self,
        subject_id: str,
        model_id: str,
        added: int,
        now: str,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
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
            ":subject": {"S": subject_id},
            ":kind": {"S": _SUBJECT_KIND},
            ":model": {"S": model_id},
            ":now": {"S": now},
            ":added": dynamo_number(added),
            ":zero": dynamo_number(0),
        }
        if metadata is not None:
            sets.append("#metadata = :metadata")
            names["#metadata"] = "metadata"
            values[":metadata"] = {"M": {k: {"S": v} for k, v in metadata.items()}}
        return {
            "Update": {
                "TableName": self.table,
                "Key": {"pk": _pk(subject_id), "sk": {"S": _META_SK}},
                "UpdateExpression": f"SET {', '.join(sets)} ADD #count :added",
                "ConditionExpression": (
                    "attribute_not_exists(pk) OR #model = :model OR #count = :zero"
                ),
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    @staticmethod
    def _raise_refusal(
        exc: ClientError, subject_id: str, model_id: str, faces: Sequence[StoredFace]
    ) -> None:
        """Name the condition that cancelled the transaction; anything else is a StorageError."""
        reasons = exc.response.get("CancellationReasons", [])
        failed = [r.get("Code") == "ConditionalCheckFailed" for r in reasons]
        if failed and failed[0]:
            stored = reasons[0].get("Item", {}).get("model_id", {}).get("S", "another model")
            raise ModelMismatchError(
                f"subject {subject_id!r} is enrolled with {stored!r}, not {model_id!r}"
            ) from exc
        taken = [f.face_id for f, hit in zip(faces, failed[1:], strict=False) if hit]
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
        keys = [{"pk": i["pk"], "sk": i["sk"]} for i in items]
        faces = [k for k in keys if k["sk"]["S"] != _META_SK]
        meta = [k for k in keys if k["sk"]["S"] == _META_SK]
        for start in range(0, len(faces), _BATCH_WRITE_SIZE):
            self._batch_delete(faces[start : start + _BATCH_WRITE_SIZE])
        self._batch_delete(meta)
        return [i["image_key"]["S"] for i in items if "image_key" in i]

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
                Key={"pk": _pk(subject_id), "sk": {"S": _META_SK}},
                ConsistentRead=True,
            ).get("Item")
        if item is None:
            raise UnknownSubjectError(f"unknown subject {subject_id!r}")
        return _subject_from_item(item)

    def get_embeddings(self, subject_id: str) -> tuple[np.ndarray, list[StoredFace]]:
        """All faces of a subject, ordered by face id, and their ``(N, D) float32`` embeddings."""
        items = self._subject_items(subject_id)
        faces = [_face_from_item(i) for i in items if i["sk"]["S"].startswith(_FACE_SK)]
        if not faces:
            return np.empty((0, 0), dtype=np.float32), []
        return np.stack([f.embedding for f in faces]), faces

    def _subject_items(self, subject_id: str, *, image_keys_only: bool = False) -> list[dict]:
        """Every item under the subject's partition key; :class:`UnknownSubjectError` if no META."""
        validate_id(subject_id)
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _pk(subject_id)},
            "ConsistentRead": True,
        }
        if image_keys_only:
            kwargs["ProjectionExpression"] = "pk, sk, #image_key"
            kwargs["ExpressionAttributeNames"] = {"#image_key": "image_key"}
        with aws_errors(f"reading subject {subject_id}"):
            pages = self._db.get_paginator("query").paginate(**kwargs)
            items = [item for page in pages for item in page.get("Items", [])]
        if not any(i["sk"]["S"] == _META_SK for i in items):
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
            "ExpressionAttributeValues": {":kind": {"S": _SUBJECT_KIND}},
            "Limit": limit,
        }
        if cursor is not None:
            kwargs["ExclusiveStartKey"] = decode_cursor(cursor)
        with aws_errors("listing subjects"):
            page = self._db.query(**kwargs)
        subjects = [_subject_from_item(i) for i in page.get("Items", [])]
        last = page.get("LastEvaluatedKey")
        return subjects, encode_cursor(last) if last else None

    def all_embeddings(self, model_id: str) -> tuple[list[str], np.ndarray]:
        """Every enrolled face of ``model_id``: ``(subject_ids, (N, D) float32)`` for 1:N search.

        One row per face, so a subject id repeats once per face. A filtered scan of the whole
        table: fine for the online gallery of enrolled subjects; large galleries belong in
        Parquet (:mod:`facegate.gallery`). With no faces the array is ``(0, 0)``.
        """
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "FilterExpression": "begins_with(sk, :face) AND #model = :model",
            "ProjectionExpression": "pk, #embedding, #dim",
            "ExpressionAttributeNames": {
                "#model": "model_id",
                "#embedding": "embedding",
                "#dim": "dim",
            },
            "ExpressionAttributeValues": {":face": {"S": _FACE_SK}, ":model": {"S": model_id}},
        }
        with aws_errors("scanning embeddings"):
            pages = self._db.get_paginator("scan").paginate(**kwargs)
            items = [item for page in pages for item in page.get("Items", [])]
        if not items:
            return [], np.empty((0, 0), dtype=np.float32)
        vectors = [_decode_embedding(i) for i in items]
        if len({v.shape[0] for v in vectors}) != 1:
            raise ModelMismatchError(f"faces of {model_id!r} have different embedding dims")
        subject_ids = [i["pk"]["S"].removeprefix("SUBJECT#") for i in items]
        return subject_ids, np.stack(vectors)


def encode_cursor(key: Mapping[str, Any]) -> str:
    """DynamoDB's LastEvaluatedKey as an opaque, URL-safe string."""
    raw = json.dumps(key, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Inverse of :func:`encode_cursor`, refusing anything that is not a key of the index.

    The cursor comes from a caller: checking its shape keeps a forged one from reaching
    DynamoDB as anything but a start key of the ``subjects`` index.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (AttributeError, TypeError, ValueError, binascii.Error) as exc:
        raise ValidationError("invalid cursor") from exc
    valid = (
        isinstance(key, dict)
        and set(key) == _CURSOR_KEYS
        and all(isinstance(v, dict) and list(v) == ["S"] for v in key.values())
        and all(isinstance(v["S"], str) for v in key.values())
    )
    if not valid:
        raise ValidationError("invalid cursor")
    return key
