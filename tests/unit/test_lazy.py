"""pyarrow is imported when a Parquet route first needs it, not with the API function.

``/compare`` and ``/verify`` never read a gallery, and ``import pyarrow`` was ~30 MiB of the
API function's peak memory (bench: peak RSS, API function). Each check runs in a fresh
interpreter: this test process has pyarrow loaded already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from facegate.lazy import lazy_module

REPO = Path(__file__).resolve().parents[2]
#: The API function's app answering one /compare, as its handler would.
COMPARE = """
import base64, json, sys
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {block!r}:
            raise ImportError(name + " is refused here")
sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {api!r})
from fastapi.testclient import TestClient
from app.main import create_app
photos = [base64.b64encode(open(p, "rb").read()).decode() for p in {photos!r}]
with TestClient(create_app()) as client:
    answer = client.post("/compare", json={{"image_a": photos[0], "image_b": photos[1]}})
print(json.dumps({{"status": answer.status_code, "match": answer.json().get("match"),
                  "pyarrow": sorted(m for m in sys.modules if m.split(".")[0] == "pyarrow")}}))
"""


def _compare(faces_dir: Path, *, block: tuple[str, ...]) -> dict[str, object]:
    photos = [str(faces_dir / "person_a_1.jpg"), str(faces_dir / "person_a_2.jpg")]
    code = COMPARE.format(api=str(REPO / "functions" / "api"), photos=photos, block=block)
    env = os.environ | {"FACEGATE_AUTH_MODE": "none"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compare_answers_where_pyarrow_cannot_be_imported(faces_dir):
    """The API function's app imports, and answers /compare, with pyarrow refused."""
    answer = _compare(faces_dir, block=("torch", "pyarrow"))
    assert answer == {"status": 200, "match": True, "pyarrow": []}


def test_the_first_parquet_use_imports_pyarrow():
    """Modules naming pyarrow lazily get the real module on first use, in a process where
    nothing imported pyarrow before: a results schema, and a gallery's source-time column."""
    code = (
        "import sys\n"
        "from facegate.batch.results import result_columns\n"
        "from facegate.gallery.table import source_time\n"
        "assert 'pyarrow' not in sys.modules\n"
        "print(result_columns()[:2], source_time(), 'pyarrow' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "('row', 'probe') timestamp[us, tz=UTC] True"


def test_a_module_imported_already_is_itself():
    assert lazy_module("json") is json


def test_a_lazy_module_takes_on_the_namespace_it_stands_for():
    """``wave`` (stdlib, imported by nothing here) is imported at the first attribute read,
    and later reads find the attribute on the stand-in itself."""
    code = (
        "import sys\n"
        "from facegate.lazy import lazy_module\n"
        "w = lazy_module('wave')\n"
        "before = 'wave' in sys.modules\n"
        "error = w.Error\n"
        "print(before, 'wave' in sys.modules, 'Error' in vars(w),\n"
        "      error is sys.modules['wave'].Error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True", "True"]
