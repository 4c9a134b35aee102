"""Pair lists: the LFW ``pairs.txt`` format and a generic ``pairs.csv``. Torch-free.

LFW's header is ``<folds> <n>``; each fold then lists ``n`` same-person lines
(``name i j``) followed by ``n`` different-person lines (``name1 i name2 j``). Image ``i`` of
``name`` lives at ``<root>/<name>/<name>_<i:04d>.jpg``.

The generic CSV (``path_a,path_b,same`` header, extra columns ignored) is for any other data
set: paths are relative to a root folder, ``same`` is 1/0, true/false or yes/no. It has no
folds: a CSV is scored at a fixed threshold, as a deployment would use it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from facegate.errors import ValidationError


@dataclass(frozen=True)
class Pair:
    path_a: Path
    path_b: Path
    same: bool
    fold: int


def lfw_image_path(root: Path, name: str, index: int) -> Path:
    return root / name / f"{name}_{index:04d}.jpg"


def read_lfw_pairs(pairs_file: str | Path, root: str | Path) -> list[Pair]:
    """Parse an LFW-format pairs file; folds come from its header."""
    root = Path(root)
    lines = [ln.split() for ln in Path(pairs_file).read_text().splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 2:
        raise ValidationError(f"{pairs_file}: first line must be '<folds> <pairs per class>'")
    n_folds, per_class = int(lines[0][0]), int(lines[0][1])
    body = lines[1:]
    if len(body) != n_folds * 2 * per_class:
        raise ValidationError(
            f"{pairs_file}: header promises {n_folds}x2x{per_class} pairs, found {len(body)}"
        )
    pairs: list[Pair] = []
    for n, fields in enumerate(body):
        fold = n // (2 * per_class)
        if len(fields) == 3:
            name, i, j = fields
            pairs.append(
                Pair(
                    lfw_image_path(root, name, int(i)),
                    lfw_image_path(root, name, int(j)),
                    True,
                    fold,
                )
            )
        elif len(fields) == 4:
            name_a, i, name_b, j = fields
            pairs.append(
                Pair(
                    lfw_image_path(root, name_a, int(i)),
                    lfw_image_path(root, name_b, int(j)),
                    False,
                    fold,
                )
            )
        else:
            raise ValidationError(f"{pairs_file}: line {n + 2} has {len(fields)} fields")
    return pairs


TRUE_WORDS = {"1", "true", "yes", "y", "same"}
FALSE_WORDS = {"0", "false", "no", "n", "different"}
CSV_COLUMNS = ("path_a", "path_b", "same")


def _as_bool(value: str, where: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValidationError(f"{where}: 'same' must be 1/0, true/false or yes/no, got {value!r}")


def read_pairs_csv(pairs_file: str | Path, root: str | Path) -> list[Pair]:
    """Parse ``path_a,path_b,same`` rows; paths relative to ``root`` unless absolute."""
    root = Path(root)
    with open(pairs_file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValidationError(
                f"{pairs_file}: header must name {', '.join(CSV_COLUMNS)}; missing {missing}"
            )
        pairs = []
        for line, row in enumerate(reader, start=2):
            where = f"{pairs_file}: line {line}"
            if not row["path_a"] or not row["path_b"]:
                raise ValidationError(f"{where}: empty path")
            same = _as_bool(row["same"] or "", where)
            pairs.append(Pair(root / row["path_a"], root / row["path_b"], same, 0))
    if not pairs:
        raise ValidationError(f"{pairs_file}: no pairs")
    return pairs
