"""Collections: the named groups enrolled subjects belong to, on DynamoDB. Torch-free.

A collection is what AWS Rekognition calls a collection and CompreFace a face service: a
set of subjects embedded with one model and decided with one rule. Its subjects are keyed by
it (:mod:`facegate.storage.subject_items`); every subject enrolled without naming one belongs
to the implicit ``default`` collection.

Item layout, in the subjects table (:func:`facegate.storage.subjects.table_definition`):
one item per collection, all in one partition, so that listing them is one ``Query`` sorted
by name::

    pk = "COLLECTIONS", sk = "COLLECTION#<name>"
    name, model_id, created_at (ISO-8601 UTC) and, when set, description, threshold, far,
    multi_face, galleries (a string set: the batch galleries attached for identify) and
    deleting (when its deletion began: from then on nothing is enrolled into it)

The items carry neither ``kind`` nor ``subject_id``: they stay out of the sparse
``subjects`` index and out of every subject query.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, cast, get_args

from botocore.exceptions import ClientError

from facegate.common import ID_PATTERN, utc_now, validate_id
from facegate.errors import (
    CollectionDeletingError,
    CollectionExistsError,
    DefaultCollectionError,
    UnknownCollectionError,
    ValidationError,
)
from facegate.settings import MultiFacePolicy, Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.keys import DEFAULT_COLLECTION
from facegate.storage.subject_items import decode_start_key, encode_cursor

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

__all__ = [
    "COLLECTIONS_PK",
    "COLLECTION_SK",
    "DEFAULT_COLLECTION",
    "MAX_ATTACHED_GALLERIES",
    "MAX_DESCRIPTION_CHARS",
    "MAX_LIST_LIMIT",
    "Collection",
    "CollectionStore",
]

# DEFAULT_COLLECTION (storage.keys), the collection every subject enrolled without naming one
# belongs to, always exists: it is never stored by CollectionStore.create, nor deleted.
COLLECTIONS_PK = "COLLECTIONS"
COLLECTION_SK = "COLLECTION#"
#: A description is a label for people ("lobby kiosks, building 2"), not a document.
MAX_DESCRIPTION_CHARS = 256
MAX_LIST_LIMIT = 1000
#: Galleries one collection searches besides its subjects: each is loaded per identify.
MAX_ATTACHED_GALLERIES = 10
MULTI_FACE_POLICIES: tuple[str, ...] = get_args(MultiFacePolicy)
_CURSOR_KEYS = frozenset({"pk", "sk"})


@dataclass(frozen=True)
class Collection:
    """A collection and its decision defaults; checked on construction, so an invalid one
    never reaches the table (nor comes back from it unnoticed).

    ``threshold`` (a cosine in [-1, 1]) or ``far`` (a target false accept rate, 0 < far < 1,
    answered by the model card's calibration), at most one of them: both None means the
    deployment's rule. ``multi_face`` None likewise means the deployment's policy.
    ``created_at`` is ISO-8601 UTC, stamped by :meth:`CollectionStore.create`; None for
    ``default`` while it is the implicit collection (it was never created: it is as old as
    the deployment). ``galleries`` are the batch galleries ``identify`` in the collection
    searches besides its subjects, sorted; ``deleting`` is when the collection's deletion
    began (None: it is not being deleted).
    """

    name: str
    model_id: str
    description: str | None = None
    threshold: float | None = None
    far: float | None = None
    multi_face: MultiFacePolicy | None = None
    created_at: str | None = None
    galleries: tuple[str, ...] = ()
    deleting: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.name, "collection")
        if not isinstance(self.model_id, str) or not 1 <= len(self.model_id) <= 128:
            raise ValidationError("model_id must be a string of 1-128 characters")
        if self.description is not None and (
            not isinstance(self.description, str)
            or len(self.description) > MAX_DESCRIPTION_CHARS
            or not self.description.isprintable()
        ):
            raise ValidationError(
                f"description must be at most {MAX_DESCRIPTION_CHARS} printable characters"
            )
        if self.threshold is not None and self.far is not None:
            raise ValidationError("give a threshold or a far, not both")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", _number(self.threshold, "threshold"))
            if not -1.0 <= float(self.threshold) <= 1.0:
                raise ValidationError("threshold must be between -1 and 1")
        if self.far is not None:
            object.__setattr__(self, "far", _number(self.far, "far"))
            if not 0.0 < float(self.far) < 1.0:
                raise ValidationError("far must be between 0 and 1 (exclusive)")
        if self.multi_face is not None and self.multi_face not in MULTI_FACE_POLICIES:
            raise ValidationError(f"multi_face must be one of {', '.join(MULTI_FACE_POLICIES)}")
        if self.created_at is not None and not isinstance(self.created_at, str):
            raise ValidationError("created_at must be an ISO-8601 string")
        if isinstance(self.galleries, str):
            raise ValidationError("galleries must be a list of gallery names")
        galleries = tuple(sorted({validate_id(g, "gallery") for g in self.galleries}))
        if len(galleries) > MAX_ATTACHED_GALLERIES:
            raise ValidationError(f"at most {MAX_ATTACHED_GALLERIES} galleries per collection")
        object.__setattr__(self, "galleries", galleries)
        if self.deleting is not None and not isinstance(self.deleting, str):
            raise ValidationError("deleting must be an ISO-8601 string")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"galleries": list(self.galleries)}


def _number(value: Any, what: str) -> float:
    """A finite float; ``bool`` refused (``True`` is not a threshold)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{what} must be a finite number")
    return float(value)


# --------------------------------------------------------------------------------------
# Items and cursors
# --------------------------------------------------------------------------------------


def collection_key(name: str) -> dict[str, Any]:
    """The primary key of a collection's item."""
    return to_attributes({"pk": COLLECTIONS_PK, "sk": COLLECTION_SK + name})


def collection_item(collection: Collection) -> dict[str, Any]:
    """The item of a collection (None fields are left out, as absent attributes; so are
    no galleries: DynamoDB holds no empty set)."""
    doc = collection.to_dict() | {"galleries": set(collection.galleries) or None}
    return {**collection_key(collection.name), **to_attributes(doc)}


def collection_guard(table: str, name: str) -> TransactWriteItemTypeDef:
    """The condition an enrolment into collection ``name`` commits on: the collection exists
    and its deletion has not begun. Checked in the enrolment's own transaction, so that a
    deletion that lists the collection's subjects after marking it cannot miss one: either
    the enrolment committed before the mark (and is listed) or it is cancelled."""
    return {
        "ConditionCheck": {
            "TableName": table,
            "Key": collection_key(name),
            "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(deleting)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def collection_from_item(item: Mapping[str, Any]) -> Collection:
    """A decoded (:func:`~facegate.storage.dynamo.from_attributes`) collection item."""
    threshold, far = item.get("threshold"), item.get("far")
    return Collection(
        name=item["name"],
        model_id=item["model_id"],
        description=item.get("description"),
        threshold=None if threshold is None else float(threshold),
        far=None if far is None else float(far),
        multi_face=item.get("multi_face"),
        created_at=item.get("created_at"),
        galleries=tuple(item.get("galleries") or ()),
        deleting=item.get("deleting"),
    )


#: Where listing starts when the first page held only ``default``: before every name, as no
#: name is empty. DynamoDB starts a query after any key value, stored or not.
_FIRST_KEY = {"pk": {"S": COLLECTIONS_PK}, "sk": {"S": COLLECTION_SK}}


def _start_name(name: str) -> bool:
    """A name a page may end on: a collection's, or empty (:data:`_FIRST_KEY`). Bounded, so
    a forged key too long for DynamoDB is the caller's 400, not a storage failure."""
    return name == "" or ID_PATTERN.match(name) is not None


def decode_collection_cursor(cursor: str) -> dict[str, Any]:
    """The start key in a cursor made by :func:`~facegate.storage.subject_items.encode_cursor`
    (the subjects' listing's encoding: DynamoDB's key, JSON, URL-safe base64), refusing
    anything but a key of the collections' partition.

    Not :func:`~facegate.storage.subject_items.decode_cursor`: that one accepts the keys of
    the ``subjects`` index only. The cursor comes from a caller: a forged start key outside
    the partition, or too long for DynamoDB, would come back as DynamoDB's
    ``ValidationException``, a :class:`~facegate.errors.StorageError` (503, "retry later");
    refused here, it is the caller's ``validation_error``.
    """
    key = decode_start_key(cursor, _CURSOR_KEYS)
    if not (
        key["pk"]["S"] == COLLECTIONS_PK
        and key["sk"]["S"].startswith(COLLECTION_SK)
        and _start_name(key["sk"]["S"].removeprefix(COLLECTION_SK))
    ):
        raise ValidationError("invalid cursor")
    return key


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


class CollectionStore:
    """Collections in the subjects table, one item each (layout in the module docstring).

    ``default_model_id`` is the deployment's model (``FACEGATE_MODEL_ID``): the model of the
    implicit ``default`` collection, the one every enrolled subject was embedded with.
    Reads of one collection are strongly consistent, so a GET right after a POST sees it.
    """

    def __init__(self, client: DynamoDBClient, table: str, *, default_model_id: str) -> None:
        self._db = client
        self.table = table
        self.default_model_id = default_model_id

    @classmethod
    def from_settings(cls, settings: Settings) -> CollectionStore:
        return cls(
            aws_client("dynamodb", settings), settings.table, default_model_id=settings.model_id
        )

    def implicit_default(self) -> Collection:
        """``default`` as it is while nothing is stored for it: the deployment's model and
        rules, and no ``created_at`` (it was never created)."""
        return Collection(DEFAULT_COLLECTION, self.default_model_id)

    def create(self, collection: Collection) -> Collection:
        """Store a new collection stamped with ``created_at``; :class:`CollectionExistsError`
        when one of that name exists (``default`` always does). One conditional put: of two
        creates of one name exactly one succeeds."""
        if collection.name == DEFAULT_COLLECTION:
            raise CollectionExistsError(f"collection {DEFAULT_COLLECTION!r} always exists")
        stamped = replace(collection, created_at=utc_now())
        with aws_errors(f"creating collection {collection.name}"):
            try:
                self._db.put_item(
                    TableName=self.table,
                    Item=collection_item(stamped),
                    ConditionExpression="attribute_not_exists(pk)",
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                raise CollectionExistsError(
                    f"collection {collection.name!r} already exists"
                ) from exc
        return stamped

    def get(self, name: str) -> Collection:
        """The collection; :class:`UnknownCollectionError` if there is none of that name.

        ``default`` always answers: its item when one is stored, else
        :meth:`implicit_default`.
        """
        validate_id(name, "collection")
        with aws_errors(f"reading collection {name}"):
            item = self._db.get_item(
                TableName=self.table, Key=collection_key(name), ConsistentRead=True
            ).get("Item")
        if item is not None:
            return collection_from_item(from_attributes(item))
        if name == DEFAULT_COLLECTION:
            return self.implicit_default()
        raise UnknownCollectionError.named(name)

    def delete(self, name: str) -> None:
        """Delete a collection's item; :class:`DefaultCollectionError` for ``default``,
        :class:`UnknownCollectionError` when there is none (a second DELETE included: the
        condition makes the answer exact under concurrent deletes). Whether the collection
        may go (no subjects left) is the caller's to check."""
        validate_id(name, "collection")
        if name == DEFAULT_COLLECTION:
            raise DefaultCollectionError(f"collection {DEFAULT_COLLECTION!r} cannot be deleted")
        with aws_errors(f"deleting collection {name}"):
            try:
                self._db.delete_item(
                    TableName=self.table,
                    Key=collection_key(name),
                    ConditionExpression="attribute_exists(pk)",
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                raise UnknownCollectionError.named(name) from exc

    def begin_deletion(self, name: str) -> Collection:
        """Mark the collection as being deleted (once: a retried deletion keeps the first
        time) and answer it; :class:`UnknownCollectionError` when there is none,
        :class:`DefaultCollectionError` for ``default``. From the mark on, every enrolment
        into it is cancelled by :func:`collection_guard`."""
        validate_id(name, "collection")
        if name == DEFAULT_COLLECTION:
            raise DefaultCollectionError(f"collection {DEFAULT_COLLECTION!r} cannot be deleted")
        with aws_errors(f"deleting collection {name}"):
            try:
                answer = self._db.update_item(
                    TableName=self.table,
                    Key=collection_key(name),
                    UpdateExpression="SET deleting = if_not_exists(deleting, :now)",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeValues=to_attributes({":now": utc_now()}),
                    ReturnValues="ALL_NEW",
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                raise UnknownCollectionError.named(name) from exc
        return collection_from_item(from_attributes(answer["Attributes"]))

    def attach(self, name: str, gallery: str) -> Collection:
        """Add ``gallery`` to what identify in the collection searches (again: no change);
        at most :data:`MAX_ATTACHED_GALLERIES`. ``default`` gets its item on its first
        attachment, with the deployment's model."""
        return self._galleries(name, gallery, add=True)

    def detach(self, name: str, gallery: str) -> Collection:
        """Take ``gallery`` out of the collection's identify (not attached: no change)."""
        return self._galleries(name, gallery, add=False)

    def detach_everywhere(self, gallery: str) -> int:
        """Take ``gallery`` out of every collection it is attached to (a gallery destroyed
        must not stay named by another tenant's collection, to come back as someone else's
        gallery of that name); how many lost it. A collection being deleted, or deleted
        meanwhile, is skipped: it goes with its attachments."""
        validate_id(gallery, "gallery")
        detached, cursor = 0, None
        while True:
            page, cursor = self.list(MAX_LIST_LIMIT, cursor)
            for collection in page:
                if gallery not in collection.galleries or collection.deleting is not None:
                    continue
                try:
                    self.detach(collection.name, gallery)
                except (UnknownCollectionError, CollectionDeletingError):
                    continue
                detached += 1
            if cursor is None:
                return detached

    def _galleries(self, name: str, gallery: str, *, add: bool) -> Collection:
        """One conditional update of the ``galleries`` set: the collection exists (or is
        ``default``), is not being deleted and, when adding, has room for one more."""
        validate_id(name, "collection")
        validate_id(gallery, "gallery")
        values: dict[str, Any] = {":g": {gallery}}
        kwargs: dict[str, Any] = {}
        update = f"{'ADD' if add else 'DELETE'} galleries :g"
        condition = "attribute_not_exists(deleting)"
        if name == DEFAULT_COLLECTION:
            update += " SET #name = if_not_exists(#name, :name)"
            update += ", model_id = if_not_exists(model_id, :model)"
            kwargs["ExpressionAttributeNames"] = {"#name": "name"}
            values |= {":name": name, ":model": self.default_model_id}
        else:
            condition = "attribute_exists(pk) AND " + condition
        if add:
            condition += (
                " AND (attribute_not_exists(galleries) OR contains(galleries, :one)"
                " OR size(galleries) < :max)"
            )
            values |= {":one": gallery, ":max": MAX_ATTACHED_GALLERIES}
        with aws_errors(f"updating collection {name}"):
            try:
                answer = self._db.update_item(
                    TableName=self.table,
                    Key=collection_key(name),
                    UpdateExpression=update,
                    ConditionExpression=condition,
                    ExpressionAttributeValues=to_attributes(values),
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    **kwargs,
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                old = from_attributes(cast("dict[str, Any]", exc.response.get("Item") or {}))
                if not old:
                    raise UnknownCollectionError.named(name) from exc
                if old.get("deleting"):
                    raise CollectionDeletingError.named(name) from exc
                raise ValidationError(
                    f"at most {MAX_ATTACHED_GALLERIES} galleries per collection"
                ) from exc
        return collection_from_item(from_attributes(answer["Attributes"]))

    def list(
        self, limit: int = 100, cursor: str | None = None
    ) -> tuple[builtins.list[Collection], str | None]:
        """One page of collections and the cursor of the next page (None at the end).

        ``default`` comes first, on the first page (it counts towards ``limit``), then the
        stored collections sorted by name. A page can be short, even empty, with a cursor
        still given; only a ``None`` cursor means the end (as
        :meth:`~facegate.storage.subjects.SubjectStore.list_subjects`).
        """
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise ValidationError(f"limit must be an int in 1..{MAX_LIST_LIMIT}, got {limit!r}")
        page: builtins.list[Collection] = []
        if cursor is None:
            page.append(self.get(DEFAULT_COLLECTION))
            if limit == 1:
                return page, encode_cursor(_FIRST_KEY)
            start, limit = None, limit - 1
        else:
            start = decode_collection_cursor(cursor)
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :sk)",
            "ExpressionAttributeValues": to_attributes(
                {":pk": COLLECTIONS_PK, ":sk": COLLECTION_SK}
            ),
            "Limit": limit,
            # Read after write: a collection just created or attached to is listed as such
            # (the detach of a destroyed gallery must not miss a fresh attachment).
            "ConsistentRead": True,
        }
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        with aws_errors("listing collections"):
            answer = self._db.query(**kwargs)
        stored = [collection_from_item(from_attributes(i)) for i in answer.get("Items", [])]
        # A stored ``default`` was listed first already.
        page += [c for c in stored if c.name != DEFAULT_COLLECTION]
        last = answer.get("LastEvaluatedKey")
        return page, encode_cursor(last) if last else None
