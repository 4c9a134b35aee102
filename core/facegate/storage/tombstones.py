"""Tombstones: erased subjects, applied to galleries at compaction and to parts as they are
written, and the fence that keeps a DELETE and an enrolment of the same subject from
interleaving. Torch-free.

A tombstone is scoped: an erasure in one gallery (``gallery:<g>``) or of an enrolled subject
(``api``) never touches another gallery's subject of the same id. It holds no subject id: its
key is an HMAC-SHA256 of the scope and the id under a per-deployment secret
(:class:`ErasureKey`, the template's ``ErasureKey`` secret), so the table does not keep a
list of the people who asked to be forgotten (ids may be e-mail addresses), and without the
secret nobody can test whether a given person did. The services that must match rows to
tombstones hash the ids they hold.

The fence, on the subject's tombstone item, is two attributes written only with atomic
DynamoDB updates and read by conditions, never a lock anyone waits for:

- ``generation``, a counter every DELETE increments before it touches anything. An enrolment
  reads it before storing its first photo and commits its items on the condition that it has
  not moved (:meth:`EnrolmentFence.condition_check`): a DELETE that began in between cancels
  the enrolment's transaction.
- ``deleting``, a string set holding one mark per DELETE still running (its lease end and a
  random token), added in the same update and taken out when the DELETE ends, done or failed.
  An enrolment that finds a live mark is refused before it writes anything: that DELETE may
  be about to sweep the subject's photo prefix, and would take the enrolment's photos with it.
  A DELETE killed before it could take its mark out (a function timeout) leaves it to expire:
  no invocation outlives :data:`DELETION_LEASE`, so an expired mark belongs to a DELETE that
  can no longer act; the next DELETE of the subject removes it.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import ClientError

from facegate.common import iso_micros, parse_instant, validate_id
from facegate.errors import SubjectDeletedError, ValidationError
from facegate.settings import Settings
from facegate.storage.aws_errors import aws_errors, error_code
from facegate.storage.clients import aws_client
from facegate.storage.dynamo import TTL_ATTRIBUTE, expires_at, from_attributes, to_attributes
from facegate.storage.keys import DEFAULT_COLLECTION

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

TOMBSTONE_PK = "TOMBSTONE"
_TOMBSTONE_SK = "ERASED#"
#: The scope of the subjects enrolled through the API (``/subjects``).
API_SCOPE = "api"
#: BatchGetItem's limit on keys per request.
_BATCH_GET = 100
#: Lambda's hard limit on one invocation (every function's ``Timeout`` is at most this): a
#: DELETE's mark older than this cannot belong to a DELETE still running.
DELETION_LEASE = timedelta(minutes=15)


def gallery_scope(gallery: str) -> str:
    """The scope of a gallery's own subjects, ``gallery:<g>``."""
    return f"gallery:{validate_id(gallery, 'gallery')}"


def collection_scope(collection: str) -> str:
    """The scope of a collection's enrolled subjects: :data:`API_SCOPE` for the default
    collection (the scope the enrolled subjects had before collections, so that their
    tombstones still hold), ``collection:<c>`` for any other."""
    validate_id(collection, "collection")
    return API_SCOPE if collection == DEFAULT_COLLECTION else f"collection:{collection}"


def scope_collection(scope: str) -> str | None:
    """The collection whose enrolled subjects ``scope`` is (None: a gallery's scope)."""
    if scope == API_SCOPE:
        return DEFAULT_COLLECTION
    if scope.startswith("collection:"):
        return scope.removeprefix("collection:")
    return None


def check_scope(scope: str) -> str:
    """``scope`` when it is :data:`API_SCOPE`, a collection's or a gallery's, else
    :class:`ValidationError`."""
    if scope == API_SCOPE:
        return scope
    if isinstance(scope, str) and scope.startswith("gallery:"):
        return gallery_scope(scope.removeprefix("gallery:"))
    if isinstance(scope, str) and scope.startswith("collection:"):
        return collection_scope(scope.removeprefix("collection:"))
    raise ValidationError(
        f"an erasure scope is {API_SCOPE!r}, 'collection:<name>' or 'gallery:<name>'",
        detail=repr(scope),
    )


class ErasureKey:
    """The deployment's secret for tombstone keys; the bytes stay out of ``repr``.

    Given the secret, or a loader of it called once, on the first digest: a function that
    builds its stores at import (the Lambda init phase) reads the secret only if it erases
    or checks an erasure, and an import never needs AWS.
    """

    def __init__(self, secret: bytes | str | Callable[[], bytes | str]) -> None:
        self._loader = secret if callable(secret) else None
        self._secret = None if callable(secret) else _checked_secret(secret)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "ErasureKey(<secret>)"

    @classmethod
    def from_settings(cls, settings: Settings) -> ErasureKey:
        """The secret named by ``FACEGATE_ERASURE_KEY_SECRET`` (Powertools' secrets provider,
        through the settings' endpoint), read on first use."""

        def load() -> bytes | str:
            from aws_lambda_powertools.utilities.parameters import SecretsProvider

            provider = SecretsProvider(boto3_client=aws_client("secretsmanager", settings))
            with aws_errors("reading the erasure key"):
                value = provider.get(settings.erasure_key_secret)
            if not isinstance(value, str | bytes):
                raise ValidationError("the erasure key secret is not a string")
            return value

        return cls(load)

    def _bytes(self) -> bytes:
        with self._lock:
            if self._secret is None:
                assert self._loader is not None
                self._secret = _checked_secret(self._loader())
            return self._secret

    def digest(self, scope: str, subject_id: str) -> str:
        """HMAC-SHA256 of scope and id, hex: the tombstone's sort key (after ``ERASED#``)."""
        message = f"{check_scope(scope)}\n{validate_id(subject_id)}".encode()
        return hmac.new(self._bytes(), message, hashlib.sha256).hexdigest()


def _checked_secret(secret: bytes | str) -> bytes:
    raw = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(raw) < 16:
        raise ValidationError("the erasure key must be at least 16 bytes")
    return raw


def _tombstone_key(digest: str) -> dict[str, Any]:
    return to_attributes({"pk": TOMBSTONE_PK, "sk": _TOMBSTONE_SK + digest})


class ErasureLookup(Protocol):
    """Whatever answers the erasure times of subjects in a scope: a snapshot of every
    tombstone (:class:`Erasures`) or the table itself (:class:`Tombstones`)."""

    def in_scope(self, scope: str, subject_ids: Iterable[str]) -> dict[str, str]: ...


@dataclass(frozen=True)
class Erasures:
    """Every tombstone at one moment (:meth:`Tombstones.all`), matched to ids by hashing them."""

    key: ErasureKey
    times: Mapping[str, str]

    def in_scope(self, scope: str, subject_ids: Iterable[str]) -> dict[str, str]:
        """``subject_id -> erasure time`` of these subjects' tombstones in ``scope`` (one
        HMAC per distinct id: galleries hold few subjects per row count)."""
        if not self.times:
            return {}
        found = {}
        for subject in set(subject_ids):
            when = self.times.get(self.key.digest(scope, subject))
            if when is not None:
                found[subject] = when
        return found


def _mark_is_live(mark: str, now: datetime) -> bool:
    """``mark`` is ``"<lease end> <token>"``; one that cannot be read is treated as live (it
    only delays an enrolment until the next DELETE of the subject removes it)."""
    try:
        return parse_instant(mark.split(" ", 1)[0], "deletion lease") > now
    except ValidationError:
        return True


@dataclass(frozen=True)
class Deletion:
    """A running DELETE's mark on the tombstone (``digest``), and the expired marks it found."""

    digest: str
    mark: str
    expired: frozenset[str]


@dataclass(frozen=True)
class EnrolmentFence:
    """The subject's deletion generation as an enrolment found it before its first write."""

    table: str
    subject_id: str
    digest: str
    generation: int

    def condition_check(self) -> TransactWriteItemTypeDef:
        """The enrolment transaction's item that cancels it if any DELETE began since."""
        check: TransactWriteItemTypeDef = {
            "ConditionCheck": {
                "TableName": self.table,
                "Key": _tombstone_key(self.digest),
                "ConditionExpression": "attribute_not_exists(#generation)",
                "ExpressionAttributeNames": {"#generation": "generation"},
            }
        }
        if self.generation:
            check["ConditionCheck"]["ConditionExpression"] = "#generation = :generation"
            check["ConditionCheck"]["ExpressionAttributeValues"] = to_attributes(
                {":generation": self.generation}
            )
        return check

    def refused(self) -> SubjectDeletedError:
        """What the enrolment raises when :meth:`condition_check` cancelled it."""
        return SubjectDeletedError(
            f"subject {self.subject_id!r} was deleted while it was being enrolled: "
            "nothing was stored"
        )


# --------------------------------------------------------------------------------------
# DynamoDB: tombstones
# --------------------------------------------------------------------------------------


class Tombstones:
    """Erasure times of subjects per scope, in the single table (``pk=TOMBSTONE``,
    ``sk=ERASED#<digest>``, :meth:`ErasureKey.digest`; ``scope`` kept in clear).

    One partition, so that compaction reads every tombstone with one (paginated) query.
    Items carry no ``kind`` attribute and so stay out of the sparse ``subjects`` index that
    lists enrolled subjects. A tombstone only ever moves forward in time: a late or replayed
    ``record`` with an older time must not resurrect rows erased by a newer one. The item of
    the :data:`API_SCOPE` carries the subject's deletion fence (:meth:`begin_deletion`,
    :meth:`fence`).

    ``retention_days`` (:attr:`Settings.tombstone_retention`, longer than any source that
    could bring the subject back) sets the item's TTL that many days after the subject's
    latest erasure; None keeps it for ever, and takes out a TTL an earlier erasure set.
    """

    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        key: ErasureKey,
        retention_days: int | None = None,
    ) -> None:
        self._db = dynamodb
        self.table = table
        self.key = key
        self.retention_days = retention_days

    @classmethod
    def from_settings(cls, settings: Settings, key: ErasureKey | None = None) -> Tombstones:
        return cls(
            aws_client("dynamodb", settings),
            settings.table,
            key or ErasureKey.from_settings(settings),
            settings.tombstone_retention,
        )

    def _ttl(self) -> tuple[str, str, int | None]:
        """The TTL's ``SET`` and ``REMOVE`` clauses (``:expires``), and its value, for a write
        now: every erasure pushes the expiry out, from its own time."""
        if self.retention_days is None:
            return "", f" REMOVE {TTL_ATTRIBUTE}", None
        return f", {TTL_ATTRIBUTE} = :expires", "", expires_at(self.retention_days, time.time())

    def record(self, scope: str, subject_id: str, when: str | datetime | None = None) -> str:
        """Record that ``subject_id`` was erased in ``scope`` at ``when`` (default now); return
        the stored time, the later of ``when`` and any earlier record for the subject."""
        digest = self.key.digest(scope, subject_id)
        stamp = iso_micros(parse_instant(when, "when") if when is not None else datetime.now(UTC))
        key = _tombstone_key(digest)
        set_ttl, remove_ttl, expires = self._ttl()
        with aws_errors("recording an erasure"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression=(
                        f"SET deleted_at = :when, #scope = :scope{set_ttl}{remove_ttl}"
                    ),
                    ConditionExpression="attribute_not_exists(deleted_at) OR deleted_at < :when",
                    ExpressionAttributeNames={"#scope": "scope"},
                    ExpressionAttributeValues=to_attributes(
                        {":when": stamp, ":scope": scope, ":expires": expires}
                    ),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise
                item = self._db.get_item(TableName=self.table, Key=key, ConsistentRead=True)
                return str(from_attributes(item["Item"])["deleted_at"])
        return stamp

    def begin_deletion(self, subject_id: str, scope: str = API_SCOPE) -> Deletion:
        """Move the enrolled subject's fence before a DELETE touches its photos or items: one
        update increments ``generation`` (cancelling every enrolment that read the old one)
        and adds this DELETE's mark (refusing every enrolment that starts before
        :meth:`end_deletion`), in ``scope`` (the subject's collection's:
        :func:`collection_scope`). The item is a whole tombstone even without :meth:`record`
        (``deleted_at`` set if absent).
        """
        digest = self.key.digest(check_scope(scope), subject_id)
        now = datetime.now(UTC)
        mark = f"{iso_micros(now + DELETION_LEASE)} {uuid.uuid4().hex}"
        set_ttl, remove_ttl, expires = self._ttl()
        with aws_errors("recording an erasure"):
            answer = self._db.update_item(
                TableName=self.table,
                Key=_tombstone_key(digest),
                UpdateExpression=(
                    f"SET #deleted = if_not_exists(#deleted, :now), #scope = :scope{set_ttl} "
                    f"ADD #generation :one, #deleting :mark{remove_ttl}"
                ),
                ExpressionAttributeNames={
                    "#deleted": "deleted_at",
                    "#scope": "scope",
                    "#generation": "generation",
                    "#deleting": "deleting",
                },
                ExpressionAttributeValues=to_attributes(
                    {
                        ":now": iso_micros(now),
                        ":scope": scope,
                        ":one": 1,
                        ":mark": {mark},
                        ":expires": expires,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        marks = from_attributes(answer.get("Attributes", {})).get("deleting", set())
        expired = frozenset(m for m in marks if m != mark and not _mark_is_live(m, now))
        return Deletion(digest, mark, expired)

    def end_deletion(self, deletion: Deletion) -> None:
        """Take the DELETE's mark out (and the expired ones it found), once it will write
        nothing more, whether it finished or failed."""
        self._remove_marks(deletion.digest, {deletion.mark, *deletion.expired})

    def _remove_marks(self, digest: str, marks: Iterable[str]) -> None:
        """On the condition that the tombstone exists: an update must never create one
        without a ``deleted_at``."""
        with aws_errors("recording an erasure"):
            try:
                self._db.update_item(
                    TableName=self.table,
                    Key=_tombstone_key(digest),
                    UpdateExpression="DELETE #deleting :marks",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeNames={"#deleting": "deleting"},
                    ExpressionAttributeValues=to_attributes({":marks": set(marks)}),
                )
            except ClientError as exc:
                if error_code(exc) != "ConditionalCheckFailedException":
                    raise

    def fence(self, subject_id: str, scope: str = API_SCOPE) -> EnrolmentFence:
        """The fence an enrolment of ``subject_id`` commits under; :class:`SubjectDeletedError`
        while a DELETE of the subject is running (read consistently: a DELETE that has moved
        the fence is seen). ``scope``: the subject's collection's
        (:func:`collection_scope`)."""
        digest = self.key.digest(check_scope(scope), subject_id)
        found = self._read(digest, "generation", "deleting")
        now = datetime.now(UTC)
        if any(_mark_is_live(m, now) for m in found.get("deleting", set())):
            raise SubjectDeletedError(
                f"subject {subject_id!r} is being deleted: enrol it again once the DELETE "
                "has answered"
            )
        return EnrolmentFence(self.table, subject_id, digest, int(found.get("generation", 0)))

    def deleted_at(self, scope: str, subject_id: str) -> str | None:
        """The subject's erasure time in ``scope``, None when it has none (an export)."""
        stamp = self._read(self.key.digest(scope, subject_id), "deleted_at").get("deleted_at")
        return None if stamp is None else str(stamp)

    def _read(self, digest: str, *attributes: str) -> dict[str, Any]:
        """These attributes of a tombstone item (consistently: a DELETE that has just moved
        the fence is seen); ``{}`` when there is none."""
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        with aws_errors("reading erasures"):
            item = self._db.get_item(
                TableName=self.table,
                Key=_tombstone_key(digest),
                ProjectionExpression=", ".join(names),
                ExpressionAttributeNames=names,
                ConsistentRead=True,
            ).get("Item", {})
        return from_attributes(item)

    def in_scope(self, scope: str, subject_ids: Iterable[str]) -> dict[str, str]:
        """``subject_id -> erasure time`` of these subjects in ``scope`` that have a tombstone,
        read consistently by key (BatchGetItem): what a writer checks right after it wrote a
        part, without reading every tombstone."""
        digests = {self.key.digest(scope, s): s for s in set(subject_ids)}
        found: dict[str, str] = {}
        pending = [_tombstone_key(d) for d in sorted(digests)]
        with aws_errors("reading erasures"):
            while pending:
                batch, pending = pending[:_BATCH_GET], pending[_BATCH_GET:]
                answer = self._db.batch_get_item(
                    RequestItems={
                        self.table: {
                            "Keys": batch,
                            "ProjectionExpression": "sk, deleted_at",
                            "ConsistentRead": True,
                        }
                    }
                )
                for raw in answer.get("Responses", {}).get(self.table, []):
                    item = from_attributes(raw)
                    digest = str(item["sk"]).removeprefix(_TOMBSTONE_SK)
                    found[digests[digest]] = str(item["deleted_at"])
                unprocessed = answer.get("UnprocessedKeys", {}).get(self.table)
                if unprocessed:  # throttled: asked again (the SDK's retries back off)
                    pending = list(unprocessed["Keys"]) + pending
        return found

    def all(self, page_size: int | None = None) -> Erasures:
        """Every tombstone, read consistently so that an erasure acknowledged just before a
        compaction is honoured by it."""
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": to_attributes({":pk": TOMBSTONE_PK}),
            "ProjectionExpression": "sk, deleted_at",
            "ConsistentRead": True,
        }
        if page_size is not None:
            kwargs["PaginationConfig"] = {"PageSize": page_size}
        with aws_errors("reading erasures"):
            pages = self._db.get_paginator("query").paginate(**kwargs)
            items = [from_attributes(i) for page in pages for i in page.get("Items", [])]
        times = {
            str(i["sk"]).removeprefix(_TOMBSTONE_SK): str(i["deleted_at"])
            for i in items
            if str(i["sk"]).startswith(_TOMBSTONE_SK)
        }
        return Erasures(self.key, times)
