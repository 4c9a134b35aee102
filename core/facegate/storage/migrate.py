"""A table and bucket written before collections, moved into the default collection. Torch-free.

Before collections a subject's items were ``pk=SUBJECT#<id>`` (META ``kind=SUBJECT``) and its
photos ``enrolments/<id>/<face>.<ext>``; now they are ``pk=SUBJECT#<collection>#<id>`` and
``enrolments/<collection>/<id>/...`` (:mod:`facegate.storage.subject_items`,
:mod:`facegate.storage.keys`). :func:`migrate_to_collections` (``facegate migrate``) moves
every legacy subject into :data:`~facegate.storage.keys.DEFAULT_COLLECTION`, one subject at a
time, in an order that a crash at any point leaves resumable:

1. its photos: the current version of each legacy key copied to the new key (server-side,
   encrypted like every object);
2. its items written under the new key, faces naming the new photo keys, each only where
   absent (a rerun keeps what an earlier run wrote);
3. the legacy items deleted, faces first and the META item last, so that until the end the
   subject is still found as legacy and the next run finishes it;
4. every version and delete marker of its legacy photos destroyed.

Then legacy photo keys no item named (left by an enrolment killed before its items) are
moved the same way, where the orphan sweep (:mod:`facegate.storage.orphans`) finds them.
Running it again finds nothing and changes nothing. Tombstones need no move: the default
collection keeps the enrolled subjects' scope, ``api``.

Last, faces written before the ``faces`` index (no index keys: 1:N search would not find
them) get their keys (:func:`index_faces`); that step is safe while the service runs.

The move must run while nothing enrols: an enrolment of the old code between steps 1 and 3 would
write a face the move does not see. Deploy the new code (which never writes the legacy
layout), then migrate. Counts only in the report: keys and ids name people.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facegate.common import ID_PATTERN
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.dynamo import from_attributes, to_attributes
from facegate.storage.face_index import FaceIndex, FaceIndexCache
from facegate.storage.keys import (
    DEFAULT_COLLECTION,
    ENROLMENT_PREFIX,
    legacy_subject_prefix,
    subject_prefix,
)
from facegate.storage.objects import ObjectStore
from facegate.storage.subject_items import (
    FACE_SK,
    FACES_PK,
    FACES_SK,
    LEGACY_SUBJECT_KIND,
    META_SK,
    SUBJECT_PK,
    faces_index_keys,
    subject_kind,
    subject_pk,
)
from facegate.storage.subjects import SUBJECTS_INDEX

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class MigrationReport:
    """What one run moved: subjects, their items and photos, legacy photo keys no item named,
    and the legacy object versions destroyed once copied."""

    subjects: int = 0
    items: int = 0
    photos: int = 0
    unreferenced_photos: int = 0
    legacy_versions_destroyed: int = 0
    #: Faces written before the ``faces`` index given its keys (:func:`index_faces`).
    faces_indexed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def migrate_to_collections(
    db: DynamoDBClient, table: str, s3: S3Client, bucket: str
) -> MigrationReport:
    """Move every subject of the legacy layout into the default collection (see the module
    docstring); the counts of what moved."""
    objects = ObjectStore(s3, bucket)
    counts: dict[str, int] = defaultdict(int)
    for subject_id in _legacy_subjects(db, table):
        _move_subject(db, table, objects, subject_id, counts)
        counts["subjects"] += 1
    loose = _legacy_photo_versions(objects)
    for key, versions in sorted(loose.items()):
        _copy_current(objects, key)
        objects.delete_versions([(key, v) for v in versions])
        counts["unreferenced_photos"] += 1
        counts["legacy_versions_destroyed"] += len(versions)
    counts["faces_indexed"] = index_faces(db, table)
    return MigrationReport(**counts)


def index_faces(db: DynamoDBClient, table: str) -> int:
    """Give every face item written before the ``faces`` index (no ``faces_pk``) its index
    keys, so that 1:N search finds it (:mod:`facegate.storage.face_index`), and count a
    change of each collection touched, so that warm functions read their faces again; the
    number of faces indexed. Only where the item still exists: a face deleted meanwhile is
    not written back. Safe while the service runs: new faces carry the keys already."""
    kwargs: dict[str, Any] = {
        "TableName": table,
        "FilterExpression": (
            "begins_with(pk, :subject) AND begins_with(sk, :face) AND attribute_not_exists(#fpk)"
        ),
        "ProjectionExpression": "pk, sk, face_id, model_id, created_at",
        "ExpressionAttributeNames": {"#fpk": FACES_PK},
        "ExpressionAttributeValues": to_attributes({":subject": SUBJECT_PK, ":face": FACE_SK}),
        "ConsistentRead": True,
    }
    with aws_errors("listing faces without index keys"):
        pages = db.get_paginator("scan").paginate(**kwargs)
        items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
    touched: set[str] = set()
    indexed = 0
    for item in items:
        parts = str(item["pk"]).split("#")
        if len(parts) != 3:  # the legacy layout: moved by migrate_to_collections first
            continue
        _, collection, subject_id = parts
        keys = faces_index_keys(
            collection,
            subject_id,
            str(item["face_id"]),
            str(item["model_id"]),
            str(item["created_at"]),
        )
        with aws_errors("indexing a face"):
            try:
                db.update_item(
                    TableName=table,
                    Key=to_attributes({"pk": item["pk"], "sk": item["sk"]}),
                    UpdateExpression="SET #fpk = :fpk, #fsk = :fsk",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#fpk": FACES_PK, "#fsk": FACES_SK},
                    ExpressionAttributeValues=to_attributes(
                        {":fpk": keys[FACES_PK], ":fsk": keys[FACES_SK]}
                    ),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                continue
        touched.add(collection)
        indexed += 1
    for collection in sorted(touched):
        FaceIndex(db, table, collection, FaceIndexCache()).changed()
    return indexed


def _legacy_subjects(db: DynamoDBClient, table: str) -> list[str]:
    """The ids of legacy META items (the sparse index's ``kind=SUBJECT`` partition)."""
    ids: list[str] = []
    kwargs: dict[str, Any] = {
        "TableName": table,
        "IndexName": SUBJECTS_INDEX,
        "KeyConditionExpression": "#kind = :kind",
        "ExpressionAttributeNames": {"#kind": "kind"},
        "ExpressionAttributeValues": to_attributes({":kind": LEGACY_SUBJECT_KIND}),
        "ProjectionExpression": "subject_id",
    }
    with aws_errors("listing subjects of the legacy layout"):
        for page in db.get_paginator("query").paginate(**kwargs):
            ids.extend(str(from_attributes(i)["subject_id"]) for i in page.get("Items", []))
    return sorted(set(ids))


def _move_subject(
    db: DynamoDBClient,
    table: str,
    objects: ObjectStore,
    subject_id: str,
    counts: dict[str, int],
) -> None:
    with aws_errors("reading a subject of the legacy layout"):
        pages = db.get_paginator("query").paginate(
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues=to_attributes({":pk": SUBJECT_PK + subject_id}),
            ConsistentRead=True,
        )
        # Raw attribute maps: moved as they are, so embeddings and numbers stay exact.
        items = [i for page in pages for i in page.get("Items", [])]
    photos = _legacy_photo_versions(objects, subject_id)
    for key in sorted(photos):
        _copy_current(objects, key)
    for item in items:
        _put_if_absent(db, table, _moved_item(item, subject_id))
    faces = [i for i in items if i["sk"]["S"] != META_SK]
    meta = [i for i in items if i["sk"]["S"] == META_SK]
    for item in faces + meta:
        with aws_errors("deleting a legacy item"):
            db.delete_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
    for key, versions in photos.items():
        objects.delete_versions([(key, v) for v in versions])
        counts["legacy_versions_destroyed"] += len(versions)
    counts["items"] += len(items)
    counts["photos"] += len(photos)


def _moved_item(item: dict[str, Any], subject_id: str) -> dict[str, Any]:
    """A raw legacy item under its new key: the META item in the default collection's index
    partition, a face naming its photo's new key; every other attribute as it was."""
    moved = {**item, "pk": {"S": subject_pk(subject_id, DEFAULT_COLLECTION)}}
    if item["sk"]["S"] == META_SK:
        moved["kind"] = {"S": subject_kind(DEFAULT_COLLECTION)}
    else:
        plain = from_attributes(item)
        keys = faces_index_keys(
            DEFAULT_COLLECTION,
            subject_id,
            str(plain["face_id"]),
            str(plain["model_id"]),
            str(plain["created_at"]),
        )
        moved |= to_attributes(keys)
    image_key = item.get("image_key", {}).get("S")
    if isinstance(image_key, str):
        moved["image_key"] = {"S": _new_key(image_key)}
    return moved


def _new_key(key: str) -> str:
    """``enrolments/<id>/<name>`` -> ``enrolments/default/<id>/<name>``; any other key (not
    of the legacy layout) as it is."""
    parts = key[len(ENROLMENT_PREFIX) :].split("/") if key.startswith(ENROLMENT_PREFIX) else []
    if len(parts) != 2 or not ID_PATTERN.match(parts[0]):
        return key
    return subject_prefix(parts[0], DEFAULT_COLLECTION) + parts[1]


def _legacy_photo_versions(
    objects: ObjectStore, subject_id: str | None = None
) -> dict[str, list[str]]:
    """``key -> version ids`` (delete markers too) of legacy photo keys, two levels under
    ``enrolments/`` (a collection's keys have three), of one subject or all."""
    prefix = ENROLMENT_PREFIX if subject_id is None else legacy_subject_prefix(subject_id)
    found: dict[str, list[str]] = defaultdict(list)
    for key, version in objects.versions(prefix):
        if _new_key(key) != key:
            found[key].append(version)
    return dict(found)


def _copy_current(objects: ObjectStore, key: str) -> None:
    """The key's current version at its new key; nothing when its current version is a delete
    marker (the photo was deleted already: only its old versions are left to destroy), or
    when an earlier run copied it already (nothing else writes the new key meanwhile)."""
    new = _new_key(key)
    if objects.exists(key) and not objects.exists(new):
        objects.copy(key, new)


def _put_if_absent(db: DynamoDBClient, table: str, item: dict[str, Any]) -> None:
    with aws_errors("writing a migrated item"):
        try:
            db.put_item(
                TableName=table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise
