"""The ``facegate`` command as a user runs it: exit codes, one-line errors, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

FACEGATE = Path(sys.executable).parent / "facegate"
DEFAULT_MODEL, DEFAULT_DIM = "sface+dlib", 256  # the default model: SFace + dlib fused


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FACEGATE), *map(str, args)], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, faces_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = (faces_dir / "person_b_1.jpg").read_bytes()
    files = {
        "empty": b"",
        "text": b"this is a text file, not a photo\n",
        "corrupt": good[: len(good) // 3],
    }
    out = {name: root / f"{name}.jpg" for name in files}
    for name, data in files.items():
        out[name].write_bytes(data)
    clothes = np.asarray(Image.open(faces_dir / "person_b_1.jpg").convert("RGB"))[650:, :]
    out["faceless"] = root / "faceless.jpg"
    Image.fromarray(clothes).save(out["faceless"])
    out["missing"] = root / "does-not-exist.jpg"
    return out


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("person_a_1", "person_a_2", True),
        ("person_b_1", "person_b_2", True),
        ("person_a_2", "impostor_1", False),
        ("person_b_1", "impostor_2", False),
    ],
)
def test_verify_exit_codes_and_json(faces_dir, a, b, same):
    done = run("verify", faces_dir / f"{a}.jpg", faces_dir / f"{b}.jpg", "--json")
    assert done.returncode == (0 if same else 1), done.stderr
    answer = json.loads(done.stdout)
    assert answer["match"] is same and answer["model_id"] == DEFAULT_MODEL
    assert (answer["similarity"] >= answer["threshold"]) is same


@pytest.mark.parametrize(
    "name,code",
    [
        ("empty", "invalid_image"),
        ("text", "invalid_image"),
        ("corrupt", "invalid_image"),
        ("faceless", "no_face"),
        ("missing", "invalid_image"),
    ],
)
def test_verify_bad_input_exits_2_with_one_line(faces_dir, bad_inputs, name, code):
    done = run("verify", faces_dir / "person_a_1.jpg", bad_inputs[name])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}: "), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_embed_then_identify(tmp_path, faces_dir, bad_inputs):
    people = tmp_path / "people"
    for subject, photo in [
        ("person_a", "person_a_1"),
        ("person_b", "person_b_1"),
        ("obama", "impostor_1"),
    ]:
        (people / subject).mkdir(parents=True)
        shutil.copy(faces_dir / f"{photo}.jpg", people / subject / f"{photo}.jpg")
    shutil.copy(bad_inputs["text"], people / "person_a" / "notes.jpg")
    shutil.copy(bad_inputs["faceless"], people / "person_b" / "clothes.jpg")
    shutil.copy(faces_dir / "impostor_2.jpg", people / "loose.jpg")
    gallery = tmp_path / "gallery.parquet"
    done = run("embed", people, "--out", gallery)
    assert done.returncode == 0, done.stderr
    table = pq.read_table(gallery)
    assert sorted(table.column("subject_id").to_pylist()) == ["obama", "person_a", "person_b"]
    embedding = table.schema.field("embedding")
    assert pa.types.is_fixed_size_list(embedding.type) and embedding.type.list_size == DEFAULT_DIM
    assert embedding.type.value_type == pa.float32() and not embedding.nullable
    meta = json.loads(table.schema.metadata[b"facegate"])
    assert (
        meta["model_id"] == DEFAULT_MODEL and meta["dim"] == DEFAULT_DIM and meta["row_count"] == 3
    )
    rejects = pq.read_table(tmp_path / "gallery.rejects.parquet").to_pylist()
    assert {(r["image_key"], r["reason"]) for r in rejects} == {
        ("person_a/notes.jpg", "invalid_image"),
        ("person_b/clothes.jpg", "no_face"),
        ("loose.jpg", "validation_error"),
    }

    hit = run("identify", faces_dir / "person_a_2.jpg", "--gallery", gallery, "--json")
    assert hit.returncode == 0, hit.stderr
    assert json.loads(hit.stdout)["best"]["subject_id"] == "person_a"
    miss = run("identify", faces_dir / "impostor_2.jpg", "--gallery", gallery, "--json")
    assert miss.returncode == 1 and json.loads(miss.stdout)["best"] is None

    other = run("identify", faces_dir / "person_a_2.jpg", "--gallery", gallery, "--model", "nope")
    assert other.returncode == 2 and other.stderr.startswith("error: model_not_found")


def test_models_list_names_sface():
    done = run("models", "list", "--json")
    assert done.returncode == 0
    assert "sface" in [c["model_id"] for c in json.loads(done.stdout)]


def test_reembed_submit_is_the_api_s_submission(aws, monkeypatch, capsys):
    """``reembed --submit`` goes through the same service call as ``POST /reembed``: the
    same checks, the same ``queued`` document printed and stored, the same message."""
    from facegate.cli import main
    from facegate.storage.clients import aws_client

    sqs = aws_client("sqs", aws)
    url = sqs.create_queue(QueueName="cli-reembed-jobs")["QueueUrl"]
    submit = ["reembed", "--subjects", "--to", "cli-fused", "--model", DEFAULT_MODEL, "--submit"]

    monkeypatch.delenv("FACEGATE_JOBS_QUEUE_URL", raising=False)
    assert main(submit) == 2
    assert capsys.readouterr().err == (
        "error: storage_error: no jobs queue configured (FACEGATE_JOBS_QUEUE_URL)\n"
    )
    monkeypatch.setenv("FACEGATE_JOBS_QUEUE_URL", url)
    assert main([*submit[:-3], "--model", "no-such-model", "--submit"]) == 2
    assert "is not installed here" in capsys.readouterr().err
    assert not sqs.receive_message(QueueUrl=url).get("Messages")

    assert main(submit) == 0
    queued = {"status": "queued", "source": "subjects", "target": "cli-fused"}
    queued["model_id"] = DEFAULT_MODEL
    assert json.loads(capsys.readouterr().out) == queued
    stored = aws_client("s3", aws).get_object(Bucket=aws.bucket, Key="reembed/cli-fused.json")
    assert json.loads(stored["Body"].read()) == queued
    sent = sqs.receive_message(QueueUrl=url)["Messages"]
    assert [json.loads(m["Body"])["target"] for m in sent] == ["cli-fused"]


def test_local_commands_and_option_come_from_the_entry_point(monkeypatch, tmp_path):
    """``local`` and ``--local`` are registered by infra through the ``facegate.cli`` entry
    point group; without it the core commands stand alone."""
    from importlib.metadata import entry_points

    import facegate.cli
    from facegate.cli.extensions import CommandLine

    (local,) = [e for e in entry_points(group="facegate.cli") if e.name == "local"]
    assert local.value == "facegate_local.cli:register"
    with_infra = facegate.cli.build_parser()
    assert with_infra.parse_args(["gallery", "show", "g", "--local"]).target.name == "local"

    monkeypatch.setattr(facegate.cli, "load_extensions", CommandLine)
    core_only = facegate.cli.build_parser()
    assert vars(core_only.parse_args(["gallery", "show", "g"])).get("target") is None
    for argv in (["local", "status"], ["gallery", "show", "g", "--local"]):
        with pytest.raises(SystemExit) as exit_info:
            core_only.parse_args(argv)
        assert exit_info.value.code == 2

    env = {"FACEGATE_LOCAL_STATE_DIR": str(tmp_path / "no-stack")}
    done = subprocess.run(
        [str(FACEGATE), "gallery", "show", "g", "--local"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert done.returncode == 2
    assert (
        done.stderr
        == "error: facegate_error: the local stack is not running: 'facegate local up'\n"
    )


def test_an_extension_that_is_missing_or_broken_does_not_break_the_command_line(
    monkeypatch, capsys
):
    from importlib.metadata import EntryPoint

    from facegate.cli import extensions

    entries = [
        EntryPoint("gone", "facegate_not_installed.cli:register", extensions.ENTRY_POINT_GROUP),
        EntryPoint("broken", "facegate.cli.extensions:ENTRY_POINT_GROUP", "facegate.cli"),
    ]
    monkeypatch.setattr(extensions, "entry_points", lambda group: entries)
    loaded = extensions.load_extensions()
    assert loaded.targets == [] and loaded.groups == []
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: facegate extension 'broken'")


def test_core_never_imports_the_local_stack():
    import ast

    import facegate

    root = Path(facegate.__file__).resolve().parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("facegate_local")]
    assert offenders == []
