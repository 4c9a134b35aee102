"""Light functions must not pay for torch: these modules import without it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests_support import run_without_torch

TORCH_FREE = [
    "facegate",
    "facegate.errors",
    "facegate.settings",
    "facegate.types",
    "facegate.image",
    "facegate.align",
    "facegate.verify",
    "facegate.gallery",
    "facegate.search",
    "facegate.models.card",
    "facegate.evaluation.metrics",
    "facegate.evaluation.pairs",
    "facegate.evaluation.plots",
    "facegate.evaluation.report",
    "facegate.aws",
    "facegate.stores",
    "facegate.apikeys",
    "facegate.ingest",
    "facegate.compact",
    "facegate.gallery_cache",
    "facegate.jobs",
    "facegate.job_aggregate",
    "facegate.uploads",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_imports_without_torch(module):
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or f"{module} imported torch"


def test_torch_free_even_when_torch_is_unavailable():
    """Simulate a Lambda without torch: a meta-path hook refuses it (and the run fails if torch
    or the pipeline got imported all the same)."""
    code = (
        f"import {', '.join(TORCH_FREE)}\n"
        "import facegate.verify as v, numpy as np\n"
        "print(round(v.cosine_similarity(np.ones(3), np.ones(3)), 6))\n"
    )
    done = run_without_torch(code)
    assert done.returncode == 0, done.stderr or "a light module imported torch or the pipeline"
    assert done.stdout.strip() == "1.0"
