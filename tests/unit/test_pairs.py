"""LFW pairs-file parsing."""

from __future__ import annotations

import pytest

from facegate.errors import ValidationError
from facegate.evaluation.pairs import read_lfw_pairs


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
