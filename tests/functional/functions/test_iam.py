"""The API function's role (and the compaction function's, which sweeps orphaned enrolment
photos), exactly as the SAM transform expands it, against moto with IAM on.

moto allows every call by default, so a permission missing from template.yaml (or one too
many) is invisible to a permissive moto. Here the role is created as the local stack creates
it (``facegate_local.roles``: inline policies resolved with the local physical names, assumed
through STS) and the API's storage code runs with its session keys while moto authorises every
request (``set_initial_no_auth_action_count(0)``: the fixture's setup runs before enforcement
starts, the test body entirely under it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from facegate_local.resources import create_queues, create_resources
from facegate_local.roles import (
    LOAD_MANAGED_POLICIES,
    Credentials,
    authorise_dynamodb_by_table,
    authorise_sqs_batches,
    create_operator,
    create_role,
    function_roles,
    permission_usage,
    read_authorisations,
    record_authorisations,
)
from facegate_local.template import Template
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMRequestBase
from tests_support import REAL_AWS_POINTERS, repo_root, use_fake_credentials

from facegate.errors import StorageError, UnknownSubjectError
from facegate.storage.apikeys import ApiKeyStore
from facegate.storage.photos import PhotoStore
from facegate.storage.subjects import SubjectStore

REGION = "us-east-1"
NAMES = {
    "PhotoBucket": "facegate-iam-photos",
    "SubjectsTable": "facegate-iam-subjects",
    "ApiKeysTable": "facegate-iam-keys",
}


@dataclass(frozen=True)
class Stack:
    """The local stack's bucket and table, clients with the API role's keys, and an auditor
    (``s3:*``) to look at what is left."""

    bucket: str
    role_s3: Any
    auditor_s3: Any
    keys: dict[str, list[str]]
    role_dynamodb: Any
    operator_dynamodb: Any
    authorisations: Path
    #: Clients with the compaction function's role (the orphan sweep).
    compact_s3: Any = None
    compact_dynamodb: Any = None


def _s3(credentials: Credentials) -> Any:
    return boto3.client("s3", region_name=REGION, **credentials.client_kwargs())


def _dynamodb(credentials: Credentials) -> Any:
    return boto3.client("dynamodb", region_name=REGION, **credentials.client_kwargs())


def _fake_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's fake keys, nothing pointing at a real account, AWS's managed policies loaded."""
    for name in REAL_AWS_POINTERS:
        monkeypatch.delenv(name, raising=False)
    use_fake_credentials(monkeypatch, REGION)
    monkeypatch.setenv(LOAD_MANAGED_POLICIES, "true")


def _restore_after(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
    """Put ``owner.name`` back after the test, whatever the local stack's patches do to it."""
    monkeypatch.setattr(owner, name, getattr(owner, name))


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, faces_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    """Before enforcement: the template's table and versioned bucket, the users, and photos.

    alice has a photo in two versions and one hidden behind a delete marker (what erasing her
    must remove entirely); bob has the photos of an enrolment that failed midway; carol's photo
    must survive both. moto is patched as the local stack patches it (DynamoDB checked per
    table, every decision recorded), and restored after.
    """
    _restore_after(monkeypatch, IAMRequestBase, "check_action_permitted")
    for name in ("_determine_resource", "_authenticate_and_authorize_normal_action"):
        monkeypatch.setattr(DynamoHandler, name, getattr(DynamoHandler, name, None), raising=False)
    authorisations = tmp_path / "authorisations.jsonl"
    record_authorisations(authorisations)
    authorise_dynamodb_by_table()
    _fake_account(monkeypatch)
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    with mock_aws():
        admin = {name: boto3.client(name, region_name=REGION) for name in ("s3", "dynamodb")}
        create_resources(template, admin["dynamodb"], admin["s3"])
        iam, sts = (boto3.client(name, region_name=REGION) for name in ("iam", "sts"))
        roles = function_roles(template)
        role_keys = create_role(iam, sts, roles["ApiFunction"])
        auditor = create_operator(iam, "auditor")
        compact_keys = create_role(iam, sts, roles["CompactFunction"])
        role_s3, auditor_s3 = _s3(role_keys), _s3(auditor)
        bucket = NAMES["PhotoBucket"]
        photos = PhotoStore(admin["s3"], bucket)
        jpeg = [(faces_dir / f"person_a_{i}.jpg").read_bytes() for i in (1, 2)]
        keys = {
            "alice": [
                photos.put("alice", "f1", jpeg[0], "image/jpeg"),
                photos.put("alice", "f1", jpeg[1], "image/jpeg"),
                photos.put("alice", "f2", jpeg[0], "image/jpeg"),
            ],
            "bob": [photos.put("bob", f"f{i}", jpeg[i], "image/jpeg") for i in (0, 1)],
            "carol": [photos.put("carol", "f1", jpeg[0], "image/jpeg")],
        }
        photos.objects.delete(keys["alice"][2])
        yield Stack(
            bucket,
            role_s3,
            auditor_s3,
            keys,
            _dynamodb(role_keys),
            _dynamodb(auditor),
            authorisations,
            _s3(compact_keys),
            _dynamodb(compact_keys),
        )


def _versions(s3: Any, bucket: str) -> list[str]:
    """Every key that still has a version or a delete marker."""
    answer = s3.list_object_versions(Bucket=bucket)
    entries = answer.get("Versions", []) + answer.get("DeleteMarkers", [])
    return sorted(entry["Key"] for entry in entries)


@set_initial_no_auth_action_count(0)
def test_api_role_erases_a_subject_and_undoes_a_failed_enrolment(stack: Stack) -> None:
    store = PhotoStore(stack.role_s3, stack.bucket)

    removed = store.delete_subject("alice")
    assert removed is not None and removed.rows_removed == 2
    store.delete_keys(stack.keys["bob"])

    assert _versions(stack.auditor_s3, stack.bucket) == stack.keys["carol"]


@set_initial_no_auth_action_count(0)
def test_api_role_cannot_change_the_bucket_lifecycle(stack: Stack) -> None:
    """Expiring old versions is what makes a deleted photo really go: not the API's to change."""
    with pytest.raises(ClientError) as refused:
        stack.role_s3.put_bucket_lifecycle_configuration(
            Bucket=stack.bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "keep-nothing",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "Expiration": {"Days": 1},
                    }
                ]
            },
        )
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    stack.role_s3.get_object(Bucket=stack.bucket, Key=stack.keys["carol"][0])  # the keys work


@set_initial_no_auth_action_count(0)
def test_api_role_checks_keys_but_cannot_mint_one(stack: Stack) -> None:
    """Keys live in their own table; the API reads it and nothing more (an operator, here
    the auditor, creates keys)."""
    key = ApiKeyStore(stack.operator_dynamodb, NAMES["ApiKeysTable"]).create("ops", ["verify"])
    api = ApiKeyStore(stack.role_dynamodb, NAMES["ApiKeysTable"])
    found = api.lookup(key)
    assert found is not None and found.scopes == {"verify"}
    with pytest.raises(StorageError, match="storing an API key failed: 403"):
        api.create("minted-by-the-api")
    with pytest.raises(StorageError, match="failed: 403"):
        api.revoke(found.key_id)
    subjects = SubjectStore(stack.role_dynamodb, NAMES["SubjectsTable"])
    with pytest.raises(UnknownSubjectError):  # its own table, by the table's ARN: allowed
        subjects.get_subject("nobody")


@set_initial_no_auth_action_count(0)
def test_a_missing_permission_is_refused_and_recorded(stack: Stack) -> None:
    """What the demo test relies on: a call outside the role is refused by moto and shows as
    refused in the role's usage (here: reading a photo's versions, which only erasure does)."""
    with pytest.raises(ClientError):
        stack.role_s3.get_bucket_policy(Bucket=stack.bucket)
    stack.role_s3.list_object_versions(Bucket=stack.bucket)
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    usage = permission_usage(template, read_authorisations(stack.authorisations))["ApiFunction"]
    assert usage.refused == {"s3:GetBucketPolicy"}
    assert "s3:ListBucketVersions" in usage.used
    assert "s3:ListBucketVersions" not in usage.unused


@set_initial_no_auth_action_count(0)
def test_compaction_role_sweeps_orphaned_enrolment_photos(stack: Stack) -> None:
    """The hourly sweep under the compaction role: it lists every version, queries each
    subject's face items and destroys the orphans (alice's versions and delete marker, bob's
    failed enrolment), nothing it is not granted is refused, carol's enrolled photo stays."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    from tests_support import unit_rows

    from facegate.storage.orphans import OrphanPhotoSweeper
    from facegate.storage.subjects import StoredFace

    (carol,) = stack.keys["carol"]
    (vector,) = unit_rows(np.random.default_rng(3), 1, 8)
    face = StoredFace(face_id="f1", embedding=vector, image_key=carol)
    SubjectStore(stack.operator_dynamodb, NAMES["SubjectsTable"]).write_faces(
        "carol", [face], "sface", weights_sha256="ab" * 32
    )
    later = datetime.now(UTC) + timedelta(hours=2)
    sweeper = OrphanPhotoSweeper(
        PhotoStore(stack.compact_s3, stack.bucket),
        SubjectStore(stack.compact_dynamodb, NAMES["SubjectsTable"]),
        clock=lambda: later,
    )

    swept = sweeper.sweep()

    assert (swept.subjects, swept.subjects_touched, swept.objects_deleted) == (3, 2, 4)
    assert swept.versions_deleted == 6  # alice: 2 + 1 and a marker; bob: 2
    assert _versions(stack.auditor_s3, stack.bucket) == [carol]
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    usage = permission_usage(template, read_authorisations(stack.authorisations))
    compact = usage["CompactFunction"]
    assert compact.refused == set()
    assert {"s3:ListBucketVersions", "s3:DeleteObject", "dynamodb:Query"} <= compact.used


@set_initial_no_auth_action_count(0)
def test_compaction_role_deletes_only_enrolment_photos(stack: Stack) -> None:
    """Its deletes are scoped to ``enrolments/``: a gallery upload is refused to it."""
    auditor, role = stack.auditor_s3, stack.compact_s3
    auditor.put_object(Bucket=stack.bucket, Key="uploads/g/pat/1.jpg", Body=b"photo")
    with pytest.raises(ClientError) as refused:
        role.delete_object(Bucket=stack.bucket, Key="uploads/g/pat/1.jpg")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    (bob, _) = stack.keys["bob"]
    role.delete_object(Bucket=stack.bucket, Key=bob)  # a marker, under enrolments/: allowed
    assert "uploads/g/pat/1.jpg" in _versions(auditor, stack.bucket)


@set_initial_no_auth_action_count(0)
def test_compaction_role_compacts_and_clears_only_the_inbox(stack: Stack) -> None:
    """A full run, then an incremental one, under the compaction role: nothing refused, the
    inbox markers of the merged parts deleted (conditionally), the parts themselves out of
    its reach."""
    import numpy as np
    from tests_support import unit_rows

    from facegate.gallery.format import GalleryMeta, build_gallery_table
    from facegate.storage.galleries import GalleryStore

    rng = np.random.default_rng(5)
    meta = GalleryMeta(model_id="m", weights_sha256="ab" * 32, dim=8, threshold=0.5)

    def part(subject: str) -> Any:
        return build_gallery_table(
            subject_ids=[subject],
            image_keys=[f"uploads/g/{subject}/1.jpg"],
            face_indices=np.zeros(1, np.int32),
            bboxes=np.ones((1, 4), np.float32),
            det_scores=np.ones(1, np.float32),
            embeddings=unit_rows(rng, 1, 8),
            meta=meta,
        )

    writer = GalleryStore(stack.auditor_s3, stack.bucket)
    role = GalleryStore(stack.compact_s3, stack.bucket)
    writer.write_table(writer.part_key("g", "p1"), part("ann"))
    assert role.compact("g").mode == "full"
    writer.write_table(writer.part_key("g", "p2"), part("ben"))
    report = role.compact("g")
    assert (report.mode, report.parts_read, report.rows_out) == ("incremental", 1, 2)
    listed = stack.auditor_s3.list_objects_v2(Bucket=stack.bucket, Prefix="galleries/g/inbox/")
    assert listed.get("Contents", []) == []
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    usage = permission_usage(template, read_authorisations(stack.authorisations))
    assert usage["CompactFunction"].refused == set()
    with pytest.raises(ClientError) as refused:
        stack.compact_s3.delete_object(Bucket=stack.bucket, Key=writer.part_key("g", "p1"))
    assert refused.value.response["Error"]["Code"] == "AccessDenied"


@pytest.fixture
def queues(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The template's queues and the API role, with moto patched as the local stack patches
    it for SQS (batch requests checked as their single action), and restored after."""
    from moto.sqs.responses import SQSResponse

    _restore_after(monkeypatch, SQSResponse, "_authenticate_and_authorize_normal_action")
    _restore_after(monkeypatch, IAMRequestBase, "check_action_permitted")
    authorise_sqs_batches()
    _fake_account(monkeypatch)
    template = Template(repo_root() / "template.yaml", NAMES, "facegate-iam", REGION)
    with mock_aws():
        admin = boto3.client("sqs", region_name=REGION)
        urls = create_queues(template, admin)
        iam, sts = (boto3.client(name, region_name=REGION) for name in ("iam", "sts"))
        keys = create_role(iam, sts, function_roles(template)["ApiFunction"])
        role = boto3.client("sqs", region_name=REGION, **keys.client_kwargs())
        operator = create_operator(iam, "dlq-operator")
        sqs = boto3.client("sqs", region_name=REGION, **operator.client_kwargs())
        yield {"admin": sqs, "role": role, "urls": urls}


@set_initial_no_auth_action_count(0)
def test_api_role_purges_the_dead_letter_queues_as_iam_allows(queues: dict[str, Any]) -> None:
    """An erasure deletes the person's dead letters and makes the others visible again, in
    batches, under the statement the template gives the API; another queue stays closed."""
    from facegate.batch.dlq import purge_dead_letters

    dlq = queues["urls"]["IngestDLQ"]
    for key in ("uploads/g/pat/1.jpg", "uploads/g/pat/2.jpg", "uploads/g/kim/1.jpg"):
        queues["admin"].send_message(QueueUrl=dlq, MessageBody=key)
    deleted = purge_dead_letters(queues["role"], dlq, lambda body: "/pat/" in body)
    assert deleted == 2
    left = queues["admin"].receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in left] == ["uploads/g/kim/1.jpg"]  # visible again at once
    with pytest.raises(StorageError):
        purge_dead_letters(queues["role"], queues["urls"]["IngestQueue"], lambda body: True)
