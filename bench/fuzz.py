"""``make fuzz``: schemathesis against the local stack's served schema, bounded in time.

A private local stack is started (:mod:`facegate_local.private_stack`); schemathesis loads its
``/openapi.json`` with the stack's key (which holds every scope) and runs every phase
(examples, coverage, fuzzing, stateful) against every operation, with real face photos in
the photo fields (:mod:`fuzz_hooks`). The checks: no 5xx (``not_a_server_error``), and
every answer's status, content type, headers and body as the schema documents them
(``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
``response_schema_conformance``). The run is bounded by ``--max-examples`` per operation
and phase and by ``--max-time`` overall (fuzzing and stateful testing go on until it is
spent), so the whole target stays under 4 minutes on 2 cores.

Exit status: schemathesis's (0 only with no failure and no error), or 2 when the stack did
not come up. The last two lines sum it up, the last as ``fuzz: N passed, N failed``.

    .venv/bin/python bench/fuzz.py [--max-examples 20] [--max-time 130] [--seed N]
    .venv/bin/python bench/fuzz.py --api-url http://127.0.0.1:8000 --api-key fg_...  # running
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from facegate_local.private_stack import REPO, private_stack

BENCH = Path(__file__).resolve().parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
#: Where the local stack stores the sample photos (the README's "The local stack"); the
#: hooks name them as ``s3://`` probes.
SAMPLE_PREFIX = "probes/samples/"


def photos_dir() -> Path:
    for folder in (REPO.parent / "shared" / "faces", REPO / ".cache" / "testdata" / "faces"):
        if (folder / "person_a_1.jpg").is_file():
            return folder
    raise SystemExit("no test photos: run 'make setup' first")


def run_schemathesis(
    api_url: str, api_key: str, bucket: str, args: argparse.Namespace, report: Path
) -> int:
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": str(BENCH / "fuzz_hooks.py"),
        "FACEGATE_FUZZ_PHOTOS": str(photos_dir()),
        "FACEGATE_FUZZ_S3": f"s3://{bucket}/{SAMPLE_PREFIX}" if bucket else "",
    }
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{api_url}/openapi.json",
        "--header",
        f"x-api-key: {api_key}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(args.max_examples),
        "--max-time",
        str(args.max_time),
        "--workers",
        str(args.workers),
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    # The schemathesis run is bounded by --max-time; the margin covers loading the schema,
    # the last requests in flight and writing the report.
    # In the report's folder: schemathesis and hypothesis leave their own folders in the cwd.
    run = subprocess.run(command, env=env, cwd=report.parent, timeout=args.max_time + 120)
    return run.returncode


def summary(report: Path, code: int, seconds: float) -> list[str]:
    """From schemathesis's JSON report: operations, cases, failures by kind, errors, time; the
    last line in the plain ``N passed, N failed`` form CI logs are read for."""
    if not report.is_file():
        return [f"fuzz: no report (exit {code}) after {seconds:.0f} s", "fuzz: 0 passed, 1 failed"]
    data: dict[str, Any] = json.loads(report.read_text())
    operations = data.get("operations") or {}
    cases = data.get("test_cases") or {}
    failures = ", ".join(
        f"{group['code']} {group['title']} x{group['count']}" for group in data.get("failures", [])
    )
    errors = ", ".join(f"{group['title']} x{group['count']}" for group in data.get("errors", []))
    generated, failed = int(cases.get("generated", 0)), int(cases.get("with_failures", 0))
    failed += int(cases.get("errored", 0))
    if code != 0 and not failed:  # an error no case carries (say, the schema did not load)
        failed = 1
    return [
        f"fuzz: {'passed' if code == 0 else 'FAILED'} (exit {code}) in {seconds:.0f} s; "
        f"operations {operations.get('tested', 0)}/{operations.get('selected', 0)}, "
        f"{generated} cases; failures: {failures or 'none'}; errors: {errors or 'none'}",
        f"fuzz: {generated - failed} passed, {failed} failed",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=20, help="per operation and phase")
    parser.add_argument("--max-time", type=int, default=130, help="seconds for the whole run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--api-url", help="a running stack instead of a private one")
    parser.add_argument("--api-key", help="with --api-url: a key holding every scope")
    parser.add_argument("--bucket", default="", help="with --api-url: the stack's photo bucket")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = Path(tempfile.mkdtemp(prefix="facegate-fuzz-")) / "report.json"
    if args.api_url:
        code = run_schemathesis(args.api_url, args.api_key or "", args.bucket, args, report)
    else:
        try:
            with private_stack() as stack:
                bucket = stack.resources.get("PhotoBucket", "")
                code = run_schemathesis(stack.api_url, stack.api_key, bucket, args, report)
                if code != 0 and stack.log.is_file():
                    print("--- local stack log (tail) ---\n" + stack.log.read_text()[-3000:])
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            code = 2
    print("\n".join(summary(report, code, time.monotonic() - started)))
    if code == 0:
        shutil.rmtree(report.parent, ignore_errors=True)
    else:
        print(f"fuzz: report and schemathesis's own files in {report.parent}")
    return code


if __name__ == "__main__":
    sys.exit(main())
