"""Pair lists: LFW pairs.txt and the generic pairs.csv."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facegate.errors import ValidationError
from facegate.evaluation.pairs import read_lfw_pairs, read_pairs_csv


def test_reads_folds_and_paths(tmp_path):
    text = "2 1\nAnn 1 2\nAnn 1 Bob 3\nCid 2 4\nDee 1 Eve 1\n"
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_lfw_pairs(tmp_path / "pairs.txt", tmp_path)
    assert [p.same for p in pairs] == [True, False, True, False]
    assert [p.fold for p in pairs] == [0, 0, 1, 1]
    assert pairs[1].path_b == tmp_path / "Bob" / "Bob_0003.jpg"


def test_header_mismatch_is_refused(tmp_path):
    (tmp_path / "pairs.txt").write_text("2 300\nAnn 1 2\n")
    with pytest.raises(ValidationError, match="header promises"):
        read_lfw_pairs(tmp_path / "pairs.txt", tmp_path)


def test_shared_lfw_dev_pairs_parse(lfw_dev):
    pairs = read_lfw_pairs(lfw_dev / "pairs.txt", lfw_dev)
    assert len(pairs) == 1200 and sum(p.same for p in pairs) == 600
    assert all(p.path_a.is_file() and p.path_b.is_file() for p in pairs)


def test_pairs_csv_reads_paths_under_root_and_ignores_extra_columns(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(
        "path_a,path_b,same,note\n"
        "a/1.jpg,a/2.jpg,1,x\n"
        "a/1.jpg,b/1.jpg,false,\n"
        "b/1.jpg,/abs/c.jpg,Yes,\n"
    )
    pairs = read_pairs_csv(csv_file, tmp_path / "root")
    assert [(p.path_a, p.path_b, p.same) for p in pairs] == [
        (tmp_path / "root/a/1.jpg", tmp_path / "root/a/2.jpg", True),
        (tmp_path / "root/a/1.jpg", tmp_path / "root/b/1.jpg", False),
        (tmp_path / "root/b/1.jpg", Path("/abs/c.jpg"), True),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,same\nx,y,1\n", "missing ['path_a', 'path_b']"),
        ("path_a,path_b,same\nx,y,maybe\n", "line 2: 'same' must be"),
        ("path_a,path_b,same\nx,,1\n", "line 2: empty path"),
        ("path_a,path_b,same\n", "no pairs"),
    ],
)
def test_pairs_csv_refuses_what_it_cannot_score(tmp_path, text, message):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(text)
    with pytest.raises(ValidationError, match=re.escape(message)):
        read_pairs_csv(csv_file, tmp_path)
