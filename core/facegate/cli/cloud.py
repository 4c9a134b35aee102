"""``facegate upload | gallery | reembed | jobs | keys``: a deployed (or the local) stack.

They talk to the AWS the ``FACEGATE_*`` settings name, or to a target an extension offers
(``--local``: the running local stack). Decisions go through the service layer
(:class:`facegate.service.GalleryService`), as ``POST /reembed`` and the gallery routes do.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from facegate.cli.extensions import Subcommands, Target
from facegate.cli.options import EXIT_ERROR, EXIT_OK, add_target_options, aws_settings
from facegate.errors import FaceGateError, ValidationError
from facegate.gallery.ann import ANN_MIN_ROWS


def cmd_upload(args: argparse.Namespace) -> int:
    from facegate.batch.uploads import upload
    from facegate.storage.clients import aws_client

    settings = aws_settings(args)
    key, size = upload(
        aws_client("s3", settings), settings.bucket, args.path, args.gallery, args.subject
    )
    print(f"uploaded {size} bytes to s3://{settings.bucket}/{key}")
    return EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    """Queue photos already in the photo bucket for a gallery; prints the counts as JSON."""
    from facegate.batch.backfill import BackfillPage, backfill, parse_s3_url
    from facegate.storage.clients import aws_client

    settings = aws_settings(args)
    bucket, prefix = parse_s3_url(args.url)
    request = BackfillPage(
        bucket, prefix, args.gallery, args.chunk_size or settings.archive_chunk_size
    )
    report = backfill(
        aws_client("s3", settings),
        aws_client("sqs", settings),
        settings.ingest_queue_url,
        request,
        photo_bucket=settings.bucket,
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    from facegate.service import GalleryService

    service = GalleryService.from_settings(aws_settings(args))
    if args.action == "show":
        summary = service.summary(args.name)
        if args.json:
            print(json.dumps(summary))
        else:
            for key, value in summary.items():
                print(f"{key:<16} {value}")
        return EXIT_OK
    if args.action == "index":
        print(json.dumps(service.build_index(args.name, min_rows=args.min_rows)))
        return EXIT_OK
    print(json.dumps(service.compact(args.name)))
    return EXIT_OK


def cmd_reembed(args: argparse.Namespace) -> int:
    """Re-embed a gallery's (or the enrolled subjects') photos with another model into a new
    gallery: here and now, or ``--submit`` it to the jobs worker (as ``POST /reembed``)."""
    settings = aws_settings(args)
    source = None if args.subjects else args.gallery
    if args.submit:
        from facegate.service import GalleryService

        status = GalleryService.from_settings(settings).submit_reembed(
            args.to, args.model_id, source
        )
        print(json.dumps(status))
        return EXIT_OK
    from facegate.batch.reembed import ReembedRequest
    from facegate.batch.reembed_job import run_reembed
    from facegate.pipeline.face_pipeline import FacePipeline
    from facegate.storage.clients import aws_client
    from facegate.storage.subjects import SubjectStore
    from facegate.storage.tombstones import Tombstones

    request = ReembedRequest(args.to, args.model_id, source)
    pipeline = FacePipeline(settings.model_copy(update={"model_id": request.model_id}))
    report = run_reembed(
        pipeline,
        aws_client("s3", settings),
        settings.bucket,
        request,
        subjects=SubjectStore.from_settings(settings),
        erasures=Tombstones.from_settings(settings).all(),
        policy=settings.gallery_multi_face,
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """Submit a manifest (and the probe photos beside it), or watch a job to its end."""
    if args.action == "submit":
        return _submit_job(args)
    return _watch_job(args)


def _submit_job(args: argparse.Namespace) -> int:
    import uuid

    from facegate.batch.manifest import parse_job_manifest
    from facegate.pipeline.image import content_type
    from facegate.storage.clients import aws_client
    from facegate.storage.keys import job_prefix, manifest_key
    from facegate.storage.objects import ObjectStore

    settings = aws_settings(args)
    job_id = args.job_id or uuid.uuid4().hex[:12]
    store = ObjectStore(aws_client("s3", settings), settings.bucket)
    text = args.manifest.read_text()
    rows, _ = parse_job_manifest(job_id, text, bucket=settings.bucket)
    for row in rows:  # relative probes that exist beside the manifest travel with it
        relative = row.probe_key.removeprefix(job_prefix(job_id))
        local = args.manifest.parent / relative
        if row.probe_key.startswith(job_prefix(job_id)) and local.is_file():
            data = local.read_bytes()
            store.put(row.probe_key, data, content_type=content_type(data))
    # Last: the manifest's notification starts the job, so its probes must already be there.
    store.put(manifest_key(job_id), text.encode(), content_type="text/csv")
    print(job_id)
    return EXIT_OK


def _watch_job(args: argparse.Namespace) -> int:
    import time

    from tqdm import tqdm

    from facegate.errors import UnknownJobError
    from facegate.storage.clients import aws_client
    from facegate.storage.jobs import JobStore

    settings = aws_settings(args)
    jobs = JobStore(aws_client("dynamodb", settings), settings.table)
    deadline = time.monotonic() + args.timeout
    bar = None
    while time.monotonic() < deadline:
        try:
            status = jobs.get(args.job_id)
        except UnknownJobError:
            time.sleep(1)  # the manifest notification may not have been handled yet
            continue
        if bar is None:
            bar = tqdm(total=status.chunks, desc=f"job {args.job_id}", unit="chunk")
        bar.n = status.chunks_done
        bar.refresh()
        if status.status != "running":
            bar.close()
            print(json.dumps(status.to_dict()))
            return EXIT_OK if status.status == "succeeded" else EXIT_ERROR
        time.sleep(1)
    raise FaceGateError(f"job {args.job_id} did not finish within {args.timeout} s")


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys in the table the settings name (FACEGATE_KEYS_TABLE, FACEGATE_AWS_REGION, ...),
    with the operator's own AWS credentials: the functions may only read that table."""
    from facegate.storage.apikeys import ApiKeyStore
    from facegate.storage.clients import aws_client

    settings = aws_settings(args)
    store = ApiKeyStore(aws_client("dynamodb", settings), settings.keys_table)
    if args.action == "create":
        issued = store.issue(
            args.name,
            args.scopes,
            _expiry(args.expires_in, args.expires_at),
            collections=args.collections,
        )
        for label, value in _columns(issued.record.to_dict()).items():
            print(f"{label:<11} {value}")
        print(f"{'key':<11} {issued.key}")
        print("the key is shown once: only its hash is stored", file=sys.stderr)
    elif args.action == "list":
        keys = [key.to_dict() for key in store.all()]
        if args.json:
            print(json.dumps(keys))
        else:
            for row in [{label: label for label in _WIDTHS}] + [_columns(k) for k in keys]:
                print("  ".join(f"{row[c]:<{w}}" for c, w in _WIDTHS.items()).rstrip())
    elif not store.revoke(args.key_id):
        raise FaceGateError(f"no API key with id {args.key_id!r}")
    else:
        print(f"revoked {args.key_id}")
    return EXIT_OK


def cmd_erase(args: argparse.Namespace) -> int:
    """Erase a person from the enrolled subjects and/or galleries, with the operator's
    credentials; prints one receipt per scope (JSON lines). The receipts name the person's
    keys: they are the operator's record, not a log."""
    from facegate.batch.erasure import Eraser, erase_enrolled
    from facegate.storage.photos import PhotoStore
    from facegate.storage.subjects import SubjectStore
    from facegate.storage.tombstones import gallery_scope

    if not args.enrolled and not args.galleries:
        raise ValidationError("say where to erase: --enrolled and/or --gallery NAME")
    settings = aws_settings(args)
    eraser = Eraser.from_settings(settings)
    receipts = []
    if args.enrolled:
        subjects, photos = SubjectStore.from_settings(settings), PhotoStore.from_settings(settings)
        receipts.append(erase_enrolled(eraser, subjects, photos, args.subject_id))
    for gallery in args.galleries:
        receipts.append(eraser.erase(args.subject_id, gallery_scope(gallery)))
    for receipt in receipts:
        print(json.dumps(receipt.to_dict()))
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    """Move subjects enrolled before collections into the default collection (idempotent);
    prints the counts as JSON."""
    from facegate.storage.clients import aws_client
    from facegate.storage.migrate import migrate_to_collections

    settings = aws_settings(args)
    report = migrate_to_collections(
        aws_client("dynamodb", settings),
        settings.table,
        aws_client("s3", settings),
        settings.bucket,
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


#: ``keys list`` columns and their widths.
_WIDTHS = {"id": 12, "name": 24, "scopes": 19, "collections": 24, "created": 20, "expires": 0}
#: ``keys list``'s collections of an unbound key: not an id, so never read as a collection.
_EVERY_COLLECTION = "*"
#: ``--expires-in`` units: seconds, minutes, hours, days, weeks.
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _columns(key: dict[str, object]) -> dict[str, str]:
    """What is shown of a key (:meth:`ApiKey.to_dict`), never the key or its hash."""
    expires = str(key["expires_at"] or "never") + (" (expired)" if key["expired"] else "")
    scopes, collections = key["scopes"], key["collections"]
    return {
        "id": str(key["id"]),
        "name": str(key["name"]),
        "scopes": ",".join(scopes) if isinstance(scopes, list) else "",
        "collections": (
            ",".join(collections) if isinstance(collections, list) else _EVERY_COLLECTION
        ),
        "created": str(key["created_at"]),
        "expires": expires,
    }


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    """``--expires-in 30d`` (from now) or ``--expires-at 2026-01-31T00:00:00Z``; None: never."""
    from facegate.common import parse_instant

    if expires_at is not None:
        return parse_instant(expires_at, "--expires-at")
    if expires_in is None:
        return None
    match = re.fullmatch(r"([1-9][0-9]{0,5})([smhdw])", expires_in.strip())
    if match is None:
        raise ValidationError("--expires-in is a count and a unit (s, m, h, d, w), e.g. 30d")
    return datetime.now(UTC) + timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def register(sub: Subcommands, targets: Sequence[Target]) -> None:
    p = sub.add_parser("upload", help="upload a photo set (folder or zip) or a photo to a gallery")
    p.add_argument("path", type=Path)
    p.add_argument("--gallery", required=True)
    p.add_argument("--subject", help="subject id, for a single photo")
    add_target_options(p, targets, "to")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser(
        "backfill",
        help="embed photos already in the photo bucket (s3://bucket/prefix/<subject>/<photo>) "
        "into a gallery, through the ingest queue",
    )
    p.add_argument("url", help="s3://<photo bucket>/<prefix>/")
    p.add_argument("--gallery", required=True)
    p.add_argument(
        "--chunk-size", type=int, help="photos per queue message (default: ArchiveChunkSize)"
    )
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_backfill)

    gallery = sub.add_parser("gallery", help="Parquet galleries built by the batch job")
    gallery_actions = gallery.add_subparsers(dest="action", required=True)
    for name, text in [
        ("show", "rows, subjects, rejects by reason"),
        ("compact", "rebuild it"),
        ("index", "build its ANN index (faiss) for search past a million rows"),
    ]:
        p = gallery_actions.add_parser(name, help=text)
        p.add_argument("name")
        add_target_options(p, targets, "on")
        if name == "show":
            p.add_argument("--json", action="store_true")
        if name == "index":
            p.add_argument(
                "--min-rows",
                type=int,
                default=ANN_MIN_ROWS,
                help=f"build only from this many rows (default {ANN_MIN_ROWS:,})",
            )
        p.set_defaults(func=cmd_gallery)

    p = sub.add_parser(
        "reembed", help="re-embed a gallery's or the subjects' photos with another model"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery", help="source gallery name")
    source.add_argument("--subjects", action="store_true", help="the enrolled subjects' photos")
    p.add_argument("--to", required=True, help="new gallery to write")
    p.add_argument("--model", dest="model_id", required=True, help="model id to embed with")
    p.add_argument("--submit", action="store_true", help="queue it for the jobs worker")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_reembed)

    jobs = sub.add_parser("jobs", help="batch verification jobs")
    job_actions = jobs.add_subparsers(dest="action", required=True)
    p = job_actions.add_parser("submit", help="upload a manifest.csv (+ probes beside it)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--job-id", help="default: a new random id (printed)")
    add_target_options(p, targets, "to")
    p.set_defaults(func=cmd_jobs)
    p = job_actions.add_parser("watch", help="progress bar until the job ends")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=3600)
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "erase",
        help="erase a person from every store (enrolment, galleries, uploads, jobs, dead "
        "letters); prints the receipt",
    )
    p.add_argument("subject_id")
    p.add_argument("--enrolled", action="store_true", help="the subject enrolled via the API")
    p.add_argument(
        "--gallery",
        dest="galleries",
        action="append",
        default=[],
        help="a gallery the person is in (repeat for several); galleries re-embedded from it "
        "are included",
    )
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_erase)

    p = sub.add_parser(
        "migrate",
        help="move subjects enrolled before collections into the default collection "
        "(run once after deploying; safe to run again)",
    )
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="API keys of a deployed stack (FACEGATE_KEYS_TABLE)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    p = key_actions.add_parser("create", help="create a key; printed once, only its hash is kept")
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        required=True,
        help="what the key may do, repeated for several: verify, enrol, admin",
    )
    p.add_argument(
        "--collection",
        dest="collections",
        action="append",
        metavar="COLLECTION",
        help="bind the key to this collection (repeat for several; 'default' included): its "
        "scopes then apply there only, and no deployment-wide route is open to it. "
        "Without it, the key acts on every collection",
    )
    expiry = p.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", help="lifetime from now: 3600s, 90m, 12h, 30d, 4w")
    expiry.add_argument(
        "--expires-at", help="expiry as ISO-8601 with a zone, e.g. 2026-01-31T00:00:00Z"
    )
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_keys)
    p = key_actions.add_parser(
        "list", help="id, name, scopes, collections (* for all), created, expires of every key"
    )
    p.add_argument("--json", action="store_true")
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_keys)
    p = key_actions.add_parser("revoke", help="revoke a key by its id (see 'keys list')")
    p.add_argument("--id", dest="key_id", required=True)
    add_target_options(p, targets, "on")
    p.set_defaults(func=cmd_keys)
