"""``facegate`` command line: set-up, verify, embed, identify, evaluate, calibrate.

Exit codes: 0 success (``verify``: match), 1 ``verify``: no match, 2 any error. Errors are
one line on stderr, ``error: <code>: <message>``, never a stack trace (set
``FACEGATE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facegate.errors import FaceGateError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache"
EXIT_OK, EXIT_NO_MATCH, EXIT_ERROR = 0, 1, 2


def _settings(args: argparse.Namespace) -> Any:
    from facegate.settings import Settings

    overrides: dict[str, Any] = {}
    for name in ("model_id", "threshold", "far", "model_dir", "multi_face"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "flip", None) is not None:
        overrides["flip_tta"] = args.flip
    try:
        return Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: bad options or environment
        from facegate.errors import ValidationError

        raise ValidationError(str(exc).replace("\n", "; ")) from exc


def _pipeline(args: argparse.Namespace) -> Any:
    from facegate.pipeline.face_pipeline import FacePipeline

    return FacePipeline(_settings(args))


def cmd_setup(args: argparse.Namespace) -> int:
    from facegate.models.assets import install_all, install_sface, install_test_photos
    from facegate.settings import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    if args.onnx is not None:
        cards = [install_sface(model_dir, args.cache_dir, onnx_path=args.onnx, force=args.force)]
    else:
        cards = install_all(model_dir, args.cache_dir, force=args.force)
    for card in cards:
        print(f"model {card.model_id} ({card.version}) ready in {model_dir / card.model_id}")
    if args.test_photos:
        where = install_test_photos(args.test_photos, args.cache_dir)
        print(f"test photos ready in {where}")
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    from facegate.models.card import list_cards
    from facegate.settings import default_model_dir

    cards = list_cards(args.model_dir or default_model_dir())
    if args.json:
        print(json.dumps([json.loads(c.to_json()) for c in cards]))
    for card in cards if not args.json else []:
        dim = f"{card.embedding_dim}-d"
        print(f"{card.model_id}\t{card.architecture}\t{dim}\tthreshold {card.threshold}")
    return EXIT_OK


def cmd_models_import(args: argparse.Namespace) -> int:
    from facegate.models.import_weights import import_inception
    from facegate.settings import default_model_dir

    model_dir = args.model_dir or default_model_dir()
    card = import_inception(args.weights, model_dir, args.model_id, threshold=args.threshold)
    print(f"model {card.model_id} ({card.architecture}) ready in {model_dir / card.model_id}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    pipeline = _pipeline(args)
    results = pipeline.process_many([args.a, args.b], policy="largest")
    for label, result in zip((args.a, args.b), results, strict=True):
        if isinstance(result, FaceGateError):
            raise type(result)(f"{label}: {result.message}")
    from facegate.pipeline.verify import verify_embeddings

    first, second = results
    outcome = verify_embeddings(
        first.primary.vector,
        second.primary.vector,
        threshold=pipeline.threshold,
        model_id=pipeline.model_id,
        faces=(first.primary.detection, second.primary.detection),
    )
    if args.json:
        print(json.dumps(outcome.to_dict()))
    else:
        verdict = "MATCH" if outcome.match else "NO MATCH"
        scores = f"similarity {outcome.similarity:.4f}  threshold {outcome.threshold:.4f}"
        print(f"{verdict}  {scores}  model {outcome.model_id}")
    return EXIT_OK if outcome.match else EXIT_NO_MATCH


def _evaluate(args: argparse.Namespace, pairs: list[Any], protocol: str) -> int:
    """Every ``--model`` on the same pairs; one table, and files under ``--out`` if given.

    One model writes its report straight into ``--out``; several write one folder each
    (``--out/<model_id>/``) plus ``comparison.md``/``comparison.json`` and a shared ROC plot.
    """
    from facegate.evaluation.report import (
        fixed_report,
        kfold_report,
        terminal_table,
        write_comparison,
        write_report,
    )
    from facegate.evaluation.run import run_evaluation

    model_ids = args.models or [None]
    evaluations, reports = [], []
    for model_id in model_ids:
        args.model_id = model_id
        pipeline = _pipeline(args)
        evaluation = run_evaluation(pipeline, pairs, progress=not args.json)
        if protocol == "kfold":
            report = kfold_report(evaluation, args.root)
        else:
            report = fixed_report(evaluation, pipeline.threshold, args.root)
        evaluations.append(evaluation)
        reports.append(report)
    source = f"{args.pairs.name} on {args.root.name}"
    if args.out is not None:
        if len(reports) == 1:
            write_report(evaluations[0], reports[0], args.out, root=args.root, source=source)
        else:
            for evaluation, report in zip(evaluations, reports, strict=True):
                folder = args.out / evaluation.model_id
                write_report(evaluation, report, folder, root=args.root, source=source)
            write_comparison(evaluations, reports, args.out, source)
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else {"models": reports}))
    else:
        print(terminal_table(reports))
        if args.out is not None:
            print(f"report written to {args.out}")
    return EXIT_OK


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from facegate.evaluation.pairs import read_lfw_pairs

    return _evaluate(args, read_lfw_pairs(args.pairs, args.root), "kfold")


def cmd_eval_pairs(args: argparse.Namespace) -> int:
    from facegate.evaluation.pairs import read_pairs_csv

    return _evaluate(args, read_pairs_csv(args.pairs, args.root), "fixed")


def cmd_plot_tsne(args: argparse.Namespace) -> int:
    from facegate.evaluation.plots import plot_tsne
    from facegate.gallery.format import gallery_embeddings, read_gallery

    meta, table = read_gallery(args.gallery)
    labels = [str(s) for s in table.column("subject_id").to_pylist()]
    out = args.out or args.gallery.with_name(args.gallery.stem + "-tsne.png")
    try:
        plot_tsne(
            gallery_embeddings(table),
            labels,
            out,
            title=f"t-SNE: {args.gallery.name} ({meta.model_id})",
            max_identities=args.max_subjects,
        )
    except ValueError as exc:
        from facegate.errors import ValidationError

        raise ValidationError(str(exc)) from exc
    print(f"t-SNE map written to {out}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from facegate.evaluation.calibrate import calibrate

    record = calibrate(_pipeline(args), args.root, impostors=args.impostors)
    text = json.dumps(record, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from facegate.batch.enrol import embed_directory

    pipeline = _pipeline(args)
    rejects_path = args.rejects or args.out.with_name(args.out.stem + ".rejects.parquet")
    report = embed_directory(
        pipeline, args.directory, args.out, rejects_path, batch=args.batch, policy=args.multi_face
    )
    counts = f"{report.rows} faces from {report.photos} photos of {report.subjects} subjects"
    print(f"{counts} -> {args.out}")
    if report.rejects:
        print(f"{len(report.rejects)} rejected -> {rejects_path}")
        for key, code, message in report.rejects:
            print(f"  {key}: {code}: {message}")
    return EXIT_OK


def cmd_identify(args: argparse.Namespace) -> int:
    from facegate.gallery.format import read_gallery
    from facegate.gallery.search import search_gallery

    pipeline = _pipeline(args)
    _, table = read_gallery(args.gallery, expected_model_id=pipeline.model_id)
    face = pipeline.process(args.probe, policy="largest").primary
    found = search_gallery(face.vector, table, k=args.top_k, threshold=pipeline.threshold)
    if args.json:
        print(json.dumps(found.to_dict()))
    else:
        best = found.best
        print(f"best: {best.subject_id} ({best.similarity:.4f})" if best else "no match")
        for m in found.candidates:
            print(f"  {m.rank}. {m.subject_id:<24} {m.similarity:+.4f}  {m.image_key}")
    return EXIT_OK if found.best else EXIT_NO_MATCH


def _aws_settings(args: argparse.Namespace) -> Any:
    """Settings from the environment, or pointing at the running local stack (``--local``)."""
    from facegate.settings import Settings

    if not getattr(args, "local", False):
        return Settings()
    from facegate_local.config import FAKE_CREDENTIALS, LocalConfig
    from facegate_local.stack import repo_root, status

    state = status(LocalConfig.load(repo_root()))
    if state is None:
        raise FaceGateError("the local stack is not running: 'facegate local up'")
    os.environ.update(FAKE_CREDENTIALS)
    return Settings(
        aws_endpoint_url=state.endpoint_url,
        aws_region=state.region,
        bucket=state.resources["PhotoBucket"],
        table=state.resources["SubjectsTable"],
    )


def cmd_upload(args: argparse.Namespace) -> int:
    from facegate.batch.uploads import upload
    from facegate.storage.clients import aws_client

    settings = _aws_settings(args)
    key, size = upload(
        aws_client("s3", settings), settings.bucket, args.path, args.gallery, args.subject
    )
    print(f"uploaded {size} bytes to s3://{settings.bucket}/{key}")
    return EXIT_OK


def cmd_gallery(args: argparse.Namespace) -> int:
    from facegate.storage.galleries import GalleryStore, summarise
    from facegate.storage.tombstones import Tombstones

    settings = _aws_settings(args)
    store = GalleryStore.from_settings(settings)
    if args.action == "show":
        summary = summarise(store, args.name)
        if args.json:
            print(json.dumps(summary))
        else:
            for key, value in summary.items():
                print(f"{key:<16} {value}")
        return EXIT_OK
    report = store.compact(args.name, deleted=Tombstones.from_settings(settings).all())
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_reembed(args: argparse.Namespace) -> int:
    """Re-embed a gallery's (or the enrolled subjects') photos with another model into a new
    gallery: here and now, or ``--submit`` it to the jobs worker."""
    from facegate.batch.reembed import ReembedRequest, put_status
    from facegate.storage.clients import aws_client
    from facegate.storage.subjects import SubjectStore
    from facegate.storage.tombstones import Tombstones

    settings = _aws_settings(args)
    request = ReembedRequest(args.to, args.model_id, None if args.subjects else args.gallery)
    if args.submit:
        sqs = aws_client("sqs", settings)
        url = settings.jobs_queue_url
        if getattr(args, "local", False):
            from facegate_local.config import LocalConfig
            from facegate_local.stack import repo_root

            name = LocalConfig.load(repo_root()).template().physical["JobsQueue"]
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        if not url:
            raise FaceGateError("no jobs queue: set FACEGATE_JOBS_QUEUE_URL (or use --local)")
        status = {"status": "queued", "source": request.source, "target": request.target}
        put_status(aws_client("s3", settings), settings.bucket, request.target, status)
        sqs.send_message(QueueUrl=url, MessageBody=request.to_message())
        print(json.dumps({**status, "model_id": request.model_id}))
        return EXIT_OK
    from facegate.batch.reembed_job import run_reembed
    from facegate.pipeline.face_pipeline import FacePipeline

    pipeline = FacePipeline(settings.model_copy(update={"model_id": request.model_id}))
    report = run_reembed(
        pipeline,
        aws_client("s3", settings),
        settings.bucket,
        request,
        subjects=SubjectStore.from_settings(settings),
        deleted=Tombstones.from_settings(settings).all(),
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    """Aligned 112x112 training chips from an identity-folder data set (resumable)."""
    from facegate.training.prepare import prepare

    report = prepare(
        args.src,
        args.dst,
        settings=_settings(args),
        policy=args.multi_face or "center",
        batch=args.batch,
        workers=args.workers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.json,
    )
    print(json.dumps(report.to_dict()))
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from facegate.training.trainer import TrainConfig, Trainer

    try:
        config = TrainConfig.load(args.config, args.set or [])
    except ValueError as exc:
        raise FaceGateError(str(exc)) from exc
    trainer = Trainer(config)
    last = Path(config.out) / "last.pt"
    if args.resume and last.is_file():
        trainer.load(last)
    for record in trainer.train():
        print(json.dumps(record))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from facegate.settings import default_model_dir
    from facegate.training.export import export_checkpoint

    try:
        card = export_checkpoint(
            args.checkpoint, args.model_dir or default_model_dir(), args.model_id, args.threshold
        )
    except ValueError as exc:
        raise FaceGateError(str(exc)) from exc
    print(f"model {card.model_id} ({card.architecture}, {card.version}) exported")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """Submit a manifest (and the probe photos beside it), or watch a job to its end."""
    import time
    import uuid

    from tqdm import tqdm

    from facegate.batch.manifest import parse_manifest
    from facegate.errors import UnknownJobError
    from facegate.storage.clients import aws_client
    from facegate.storage.jobs import JobStore
    from facegate.storage.keys import job_prefix, manifest_key

    settings = _aws_settings(args)
    if args.action == "submit":
        job_id = args.job_id or uuid.uuid4().hex[:12]
        s3 = aws_client("s3", settings)
        text = args.manifest.read_text()
        rows, _ = parse_manifest(job_id, text, bucket=settings.bucket)
        for row in rows:  # relative probes that exist beside the manifest travel with it
            relative = row.probe_key.removeprefix(job_prefix(job_id))
            local = args.manifest.parent / relative
            if row.probe_key.startswith(job_prefix(job_id)) and local.is_file():
                s3.put_object(Bucket=settings.bucket, Key=row.probe_key, Body=local.read_bytes())
        s3.put_object(Bucket=settings.bucket, Key=manifest_key(job_id), Body=text.encode())
        print(job_id)
        return EXIT_OK
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
    """API keys in the table the settings name (FACEGATE_TABLE, FACEGATE_AWS_REGION, ...)."""
    from facegate.settings import Settings
    from facegate.storage.apikeys import ApiKeyStore
    from facegate.storage.clients import aws_client

    settings = Settings()
    store = ApiKeyStore(aws_client("dynamodb", settings), settings.table)
    if args.action == "create":
        print(store.create(args.name))
    else:
        store.revoke(args.key)
        print("revoked")
    return EXIT_OK


def cmd_local(args: argparse.Namespace) -> int:
    try:
        from facegate_local import demo, stack
        from facegate_local.config import LocalConfig
    except ImportError as exc:  # an installed wheel without the checkout's infra/
        raise FaceGateError(f"the local stack needs a FaceGate checkout: {exc}") from exc
    try:
        config = LocalConfig.load(stack.repo_root())
        if args.action == "up":
            state = stack.up(config)
            print(f"API      {state.api_url}")
            print(f"API key  {state.api_key}")
            print(f"AWS      {state.endpoint_url} (moto)")
            for logical, name in state.resources.items():
                print(f"{logical:<16} {name}")
        elif args.action == "down":
            print("stopped" if stack.down(config) else "not running")
        elif args.action == "status":
            state = stack.status(config)
            print(json.dumps(state.__dict__ if state else None))
            return EXIT_OK if state else EXIT_NO_MATCH
        elif args.action == "invoke":
            print(json.dumps(stack.invoke(config, args.function, args.event)))
        elif args.action == "demo":
            return demo.main(config.root)
    except stack.StackError as exc:
        print(f"error: local_stack: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facegate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", dest="model_id", help="model id (see 'facegate models list')")
        p.add_argument("--model-dir", type=Path, help="directory of model folders")
        p.add_argument("--threshold", type=float, help="override the model card's threshold")
        p.add_argument(
            "--far",
            type=float,
            help="decide at the card's threshold calibrated for this false accept rate (1e-3)",
        )
        p.add_argument(
            "--flip",
            action=argparse.BooleanOptionalAction,
            help="horizontal-flip test-time augmentation (default: FACEGATE_FLIP_TTA, off)",
        )

    p = sub.add_parser("setup", help="download, check and convert model weights")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE / "downloads")
    p.add_argument("--onnx", type=Path, help="convert this SFace ONNX file (int8 or fp32)")
    p.add_argument("--test-photos", type=Path, help="also fetch the six test photos here")
    p.add_argument("--force", action="store_true", help="convert again even if intact")
    p.set_defaults(func=cmd_setup)

    models = sub.add_parser("models", help="installed models").add_subparsers(
        dest="action", required=True
    )
    p = models.add_parser("list", help="list installed model ids")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models_list)

    p = models.add_parser("import", help="install InceptionResnetV1 weights you have")
    p.add_argument("--weights", required=True, help="state dict: local path or s3://bucket/key")
    p.add_argument("--model-id", required=True)
    p.add_argument("--threshold", type=float, required=True, help="cosine decision threshold")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=cmd_models_import)

    p = sub.add_parser("verify", help="1:1: are A and B the same person? exit 0 yes, 1 no, 2 error")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true")
    model_options(p)
    p.set_defaults(func=cmd_verify)

    evaluate = sub.add_parser("eval", help="evaluate on a pair list").add_subparsers(
        dest="dataset", required=True
    )

    def eval_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            dest="models",
            action="append",
            help="model id; repeat to compare several models on the same pairs",
        )
        p.add_argument("--model-dir", type=Path, help="directory of model folders")
        p.add_argument(
            "--flip",
            action=argparse.BooleanOptionalAction,
            help="horizontal-flip test-time augmentation (default: FACEGATE_FLIP_TTA, off)",
        )
        p.add_argument("--json", action="store_true", help="print the report as JSON")
        p.add_argument("--out", type=Path, help="write report.json/.md, scores.csv and PNGs here")

    p = evaluate.add_parser("lfw", help="LFW protocol: k-fold accuracy from a pairs.txt")
    p.add_argument("--root", type=Path, required=True, help="LFW-layout image folder")
    p.add_argument("--pairs", type=Path, required=True, help="LFW pairs.txt (folds in header)")
    eval_options(p)
    p.set_defaults(func=cmd_eval_lfw)

    p = evaluate.add_parser(
        "pairs", help="score a path_a,path_b,same CSV at the model card's threshold (untuned)"
    )
    p.add_argument("pairs", type=Path, help="CSV with path_a,path_b,same (extra columns ignored)")
    p.add_argument("--root", type=Path, required=True, help="folder the CSV's paths are under")
    p.add_argument("--threshold", type=float, help="decide at this threshold instead")
    p.add_argument("--far", type=float, help="decide at the card's threshold for this FAR")
    eval_options(p)
    p.set_defaults(func=cmd_eval_pairs)

    plot = sub.add_parser("plot", help="plots of galleries").add_subparsers(
        dest="plot", required=True
    )
    p = plot.add_parser("tsne", help="t-SNE map of a gallery's embeddings, coloured by subject")
    p.add_argument("gallery", type=Path, help="gallery .parquet")
    p.add_argument("--out", type=Path, help="PNG to write (default: beside the gallery)")
    p.add_argument("--max-subjects", type=int, default=15, help="the most photographed N")
    p.set_defaults(func=cmd_plot_tsne)

    p = sub.add_parser("calibrate", help="choose the decision threshold on identity folders")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--impostors", type=int, default=20000)
    p.add_argument("--out", type=Path)
    model_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("embed", help="embed DIR/<subject>/<photo> into a Parquet gallery")
    p.add_argument("directory", type=Path)
    p.add_argument("--out", type=Path, required=True, help="gallery .parquet to write")
    p.add_argument("--rejects", type=Path, help="rejects .parquet (default: beside --out)")
    p.add_argument("--multi-face", choices=["largest", "all", "reject"])
    p.add_argument("--batch", type=int, default=32, help="photos per detection batch")
    model_options(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("identify", help="1:N: who in the gallery is this? exit 0 found, 1 none")
    p.add_argument("probe", type=Path)
    p.add_argument("--gallery", type=Path, required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    model_options(p)
    p.set_defaults(func=cmd_identify)
    p = sub.add_parser("upload", help="upload a photo set (folder or zip) or a photo to a gallery")
    p.add_argument("path", type=Path)
    p.add_argument("--gallery", required=True)
    p.add_argument("--subject", help="subject id, for a single photo")
    p.add_argument("--local", action="store_true", help="to the running local stack")
    p.set_defaults(func=cmd_upload)

    gallery = sub.add_parser("gallery", help="Parquet galleries built by the batch job")
    gallery_actions = gallery.add_subparsers(dest="action", required=True)
    for name, text in [("show", "rows, subjects, rejects by reason"), ("compact", "rebuild it")]:
        p = gallery_actions.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--local", action="store_true", help="on the running local stack")
        if name == "show":
            p.add_argument("--json", action="store_true")
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
    p.add_argument("--local", action="store_true", help="on the running local stack")
    p.set_defaults(func=cmd_reembed)

    p = sub.add_parser("prepare", help="align an identity-folder data set into training chips")
    p.add_argument("src", type=Path, help="SRC/<identity>/<photo>")
    p.add_argument("dst", type=Path, help="chips/<identity>/*.png, rejects.csv, split.json")
    p.add_argument("--multi-face", choices=["largest", "center"], help="default: center")
    p.add_argument("--batch", type=int, default=32, help="photos per detection batch")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1 thread each)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="identities held out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a backbone on chips made by 'facegate prepare'")
    p.add_argument("--config", type=Path, help="YAML of facegate.training.trainer.TrainConfig")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="a training checkpoint as a served model")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--model-id", required=True)
    p.add_argument("--threshold", type=float, help="default: the last validation threshold")
    p.add_argument("--model-dir", type=Path)
    p.set_defaults(func=cmd_export)

    jobs = sub.add_parser("jobs", help="batch verification jobs")
    job_actions = jobs.add_subparsers(dest="action", required=True)
    p = job_actions.add_parser("submit", help="upload a manifest.csv (+ probes beside it)")
    p.add_argument("manifest", type=Path)
    p.add_argument("--job-id", help="default: a new random id (printed)")
    p.add_argument("--local", action="store_true", help="to the running local stack")
    p.set_defaults(func=cmd_jobs)
    p = job_actions.add_parser("watch", help="progress bar until the job ends")
    p.add_argument("job_id")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--local", action="store_true", help="on the running local stack")
    p.set_defaults(func=cmd_jobs)

    keys = sub.add_parser("keys", help="API keys of a deployed stack (FACEGATE_TABLE)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    p = key_actions.add_parser("create", help="create a key; printed once, only its hash is kept")
    p.add_argument("--name", required=True, help="who or what the key is for")
    p.set_defaults(func=cmd_keys)
    p = key_actions.add_parser("revoke", help="revoke a key")
    p.add_argument("key")
    p.set_defaults(func=cmd_keys)

    local = sub.add_parser("local", help="the local stack (moto + the template's functions)")
    actions = local.add_subparsers(dest="action", required=True)
    for name, text in [
        ("up", "start it in the background; prints the API URL and key"),
        ("down", "stop it and everything it started"),
        ("status", "print its state as JSON (exit 1 when down)"),
        ("demo", "run the end-to-end demo over HTTP (starts and stops the stack)"),
    ]:
        actions.add_parser(name, help=text).set_defaults(func=cmd_local)
    p = actions.add_parser("invoke", help="run a template function on an event, in-process")
    p.add_argument("function", help="logical id in template.yaml, e.g. ApiFunction")
    p.add_argument("-e", "--event", type=Path, required=True)
    p.set_defaults(func=cmd_local)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FaceGateError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a last line of defence: one line, never a trace
        if os.environ.get("FACEGATE_DEBUG"):
            raise
        print(f"error: internal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def run() -> None:
    """Console-script entry point: ``main`` and a hard exit.

    pyarrow's thread pools race with interpreter shutdown after a threaded Parquet read and
    abort the process (SIGABRT, "terminate called without an active exception") in about one
    exit in ten on this machine, turning a finished command's exit code into 134. Nothing is
    left to clean up once ``main`` returned, so flush and leave without finalisation.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
