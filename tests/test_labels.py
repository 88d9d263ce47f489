"""Tests for ghostmap.labels: label files in, label files out, and every way they can be wrong."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import PAPER_LABELS, needs_paper

from ghostmap.errors import GhostmapError
from ghostmap.labels import (
    CANONICAL_ORDER,
    DEFAULT_CLASSES,
    Labels,
    class_order,
    import_paper_yaml,
    labels_from_truth,
    read_labels,
    read_positions,
    require_trainable,
    truth_map,
    write_labels,
    write_positions,
)

SCAN = (34, 206)  # the paper's scan: rows, cols


def write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# -- the Labels container -----------------------------------------------------------------
def test_labels_normalise_dtypes_and_views():
    labels = Labels([3, 1], [0, 2], ["vertical", "none"])
    assert labels.x.dtype == np.int64 and labels.y.dtype == np.int64
    assert labels.label.dtype.kind == "U"
    assert len(labels) == 2
    assert labels.classes == ("none", "vertical")
    assert labels.to_dict() == {(3, 0): "vertical", (1, 2): "none"}
    assert labels.counts() == {"none": 1, "vertical": 1}
    assert Labels.empty().label.dtype.kind == "U" and len(Labels.empty()) == 0
    assert Labels.from_dict(labels.to_dict()) == labels


def test_labels_object_array_becomes_unicode():
    labels = Labels(np.array([0]), np.array([0]), np.array(["horizontal"], dtype=object))
    assert labels.label.dtype.kind == "U"


def test_labels_reject_duplicate_positions():
    with pytest.raises(GhostmapError, match="more than once"):
        Labels([1, 1], [2, 2], ["none", "none"])


def test_from_pairs_drops_repeats_and_rejects_conflicts():
    labels = Labels.from_pairs([(1, 2, "none"), (1, 2, "none"), (0, 0, "vertical")])
    assert labels.to_dict() == {(1, 2): "none", (0, 0): "vertical"}
    with pytest.raises(GhostmapError, match="x=1, y=2 is labelled both 'none' and 'vertical'"):
        Labels.from_pairs([(1, 2, "none"), (1, 2, "vertical")])


def test_merged_other_wins():
    a = Labels.from_dict({(0, 0): "none", (1, 0): "vertical"})
    b = Labels.from_dict({(1, 0): "horizontal", (2, 0): "none"})
    assert a.merged(b).to_dict() == {(0, 0): "none", (1, 0): "horizontal", (2, 0): "none"}


def test_class_order():
    assert CANONICAL_ORDER == ("none", "vertical", "horizontal")
    assert set(DEFAULT_CLASSES) == set(CANONICAL_ORDER)
    assert class_order(["horizontal", "none", "vertical", "none"]) == ("none", "vertical", "horizontal")
    assert class_order(["zeta", "horizontal", "alpha"]) == ("horizontal", "alpha", "zeta")
    assert class_order([]) == ()


# -- CSV ----------------------------------------------------------------------------------
def test_csv_round_trip(tmp_path):
    labels = Labels([5, 0, 205], [3, 0, 33], ["vertical", "none", "horizontal"])
    path = tmp_path / "labels.csv"
    write_labels(path, labels)
    assert path.read_text().splitlines()[0] == "x,y,label"
    again = read_labels(path, scan_shape=SCAN)
    assert again == labels
    assert again.label.dtype.kind == "U"


def test_csv_column_order_free_extra_columns_whitespace_blank_lines(tmp_path):
    path = write(tmp_path, "note, Label ,Y,x\n\nhi, vertical , 3, 5 \n\n,none,0,0\n")
    labels = read_labels(path)
    assert labels.to_dict() == {(5, 3): "vertical", (0, 0): "none"}


def test_csv_exact_duplicate_dropped(tmp_path):
    path = write(tmp_path, "x,y,label\n1,2,none\n3,3,vertical\n1,2,none\n")
    assert read_labels(path).to_dict() == {(1, 2): "none", (3, 3): "vertical"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x,label\n1,none\n", "line 1: missing column 'y'"),
        ("x,y,class\n1,2,none\n", "line 1: missing column 'label'"),
        ("a,b\n1,2\n", "missing columns 'x' and 'y' and 'label'"),
        ("x,y,label\n1,2,none\n1.5,2,none\n", "line 3: x='1.5' is not an integer"),
        ("x,y,label\n1,two,none\n", "line 2: y='two' is not an integer"),
        ("x,y,label\n-1,2,none\n", "line 2: x=-1 is negative"),
        ("x,y,label\n1,,none\n", "line 2: y is empty"),
        ("x,y,label\n1,2,  \n", "line 2: the label is empty"),
        ("x,y,label\n1,2\n", "line 2: the label is empty"),
        (
            "x,y,label\n1,2,none\n\n3,4,vertical\n1,2,vertical\n",
            "line 5: position x=1, y=2 is labelled 'vertical' here but 'none' at line 2",
        ),
    ],
)
def test_csv_errors_name_file_line_and_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(GhostmapError) as excinfo:
        read_labels(path)
    message = one_line_error(excinfo)
    assert expected in message
    assert "labels.csv" in message


def test_csv_position_outside_scan(tmp_path):
    path = write(tmp_path, "x,y,label\n0,0,none\n1,1,none\n2,2,none\n3,3,none\n4,4,none\n250,3,vertical\n")
    with pytest.raises(GhostmapError) as excinfo:
        read_labels(path, scan_shape=SCAN)
    assert one_line_error(excinfo).endswith(
        "labels.csv line 7: position x=250, y=3 is outside the scan (206 columns x 34 rows)"
    )
    # Row 34 is just outside a 34-row scan; without a scan shape nothing is checked.
    path = write(tmp_path, "x,y,label\n0,34,none\n")
    with pytest.raises(GhostmapError, match="x=0, y=34 is outside the scan"):
        read_labels(path, scan_shape=SCAN)
    assert len(read_labels(path)) == 1


def test_missing_file(tmp_path):
    with pytest.raises(GhostmapError) as excinfo:
        read_labels(tmp_path / "labels.csv")
    assert "labels.csv: label file not found" in one_line_error(excinfo)
    assert len(read_labels(tmp_path / "labels.csv", missing_ok=True)) == 0


@pytest.mark.parametrize("text", ["", "x,y,label\n", "\n\nx,y,label\n\n"])
def test_empty_or_header_only(tmp_path, text):
    path = write(tmp_path, text)
    assert len(read_labels(path, missing_ok=True)) == 0
    with pytest.raises(GhostmapError, match="labels.csv: (is empty|holds no labels)"):
        read_labels(path)


def test_not_text_and_not_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"x,y,label\n\xff\xfe\x00\n")
    with pytest.raises(GhostmapError, match="not a UTF-8 text file"):
        read_labels(path)
    with pytest.raises(GhostmapError, match="is a folder"):
        read_labels(tmp_path)


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "labels.csv"
    old = Labels([1], [2], ["none"])
    write_labels(path, old)
    before = path.read_bytes()

    def half_then_fail(self, text, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as handle:
            handle.write(text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    new = Labels(np.arange(100), np.zeros(100, int), ["vertical"] * 100)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, new)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["labels.csv"]  # no temporary left behind
    assert read_labels(path) == old


# -- positions ----------------------------------------------------------------------------
def test_positions_round_trip_and_header_only(tmp_path):
    path = tmp_path / "to_label.csv"
    write_positions(path, [4, 0], [1, 2])
    assert path.read_text() == "x,y\n4,1\n0,2\n"
    x, y = read_positions(path)
    assert x.tolist() == [4, 0] and y.tolist() == [1, 2] and x.dtype == np.int64

    write_positions(path, np.zeros(0, int), np.zeros(0, int))
    assert path.read_text() == "x,y\n"
    x, y = read_positions(path)
    assert len(x) == len(y) == 0 and x.dtype == np.int64


def test_positions_errors(tmp_path):
    with pytest.raises(GhostmapError, match="to_label.csv: positions file not found"):
        read_positions(tmp_path / "to_label.csv")
    path = write(tmp_path, "y,z\n1,2\n", "to_label.csv")
    with pytest.raises(GhostmapError, match="to_label.csv line 1: missing column 'x'"):
        read_positions(path)
    path = write(tmp_path, "x,y\n1,2\n300,2\n", "to_label.csv")
    with pytest.raises(GhostmapError, match="line 3: position x=300, y=2 is outside the scan"):
        read_positions(path, scan_shape=SCAN)


# -- checks and conversions ---------------------------------------------------------------
def test_require_trainable():
    require_trainable(Labels([0, 1], [0, 0], ["none", "vertical"]))
    with pytest.raises(GhostmapError) as excinfo:
        require_trainable(Labels([0, 1], [0, 0], ["vertical", "vertical"]))
    assert str(excinfo.value) == "labels.csv holds a single class 'vertical'; training needs at least two"
    with pytest.raises(GhostmapError, match="holds no labels"):
        require_trainable(Labels.empty())


def test_truth_map_and_labels_from_truth():
    labels = Labels([0, 2], [1, 0], ["none", "horizontal"])
    truth = truth_map(labels, (2, 3))
    assert truth.shape == (2, 3) and truth.dtype.kind == "U"
    assert truth.tolist() == [["", "", "horizontal"], ["none", "", ""]]
    assert labels_from_truth(truth, [2, 0], [0, 1]) == Labels([2, 0], [0, 1], ["horizontal", "none"])
    with pytest.raises(GhostmapError, match="x=1, y=1 has no class"):
        labels_from_truth(truth, [1], [1])
    with pytest.raises(GhostmapError, match="outside the scan"):
        labels_from_truth(truth, [3], [0])
    with pytest.raises(GhostmapError, match="outside the scan"):
        truth_map(labels, (1, 3))


# -- the paper authors' YAML files --------------------------------------------------------
def test_yaml_import_small(tmp_path):
    path = write(
        tmp_path,
        "labels:\n- file: 120_17_boxsize5.png\n  label: na\n- file: some/dir/3_4_boxsize5.png\n  label: vertical\n",
        "mine.yaml",
    )
    assert read_labels(path).to_dict() == {(120, 17): "none", (3, 4): "vertical"}
    bad = write(tmp_path, "labels:\n- file: 1_1_boxsize5.png\n  label: na\n- file: nope.png\n  label: na\n", "bad.yaml")
    with pytest.raises(GhostmapError, match="bad.yaml line 4: file name 'nope.png' does not start with X_Y_"):
        read_labels(bad)
    broken = write(tmp_path, "labels: [\n", "broken.yaml")
    with pytest.raises(GhostmapError, match="broken.yaml line .*not valid YAML"):
        read_labels(broken)


@needs_paper
def test_paper_test_data_yaml():
    labels = import_paper_yaml(PAPER_LABELS / "test_data.yaml", scan_shape=SCAN)
    assert len(labels) == 1000
    table = labels.to_dict()
    assert table[(120, 17)] == "none"  # file: 120_17_boxsize5.png, label: na
    assert table[(51, 12)] == "vertical"
    assert table[(198, 23)] == "horizontal"
    assert labels.classes == ("none", "vertical", "horizontal")
    assert "na" not in labels.label.tolist()
    assert read_labels(PAPER_LABELS / "test_data.yaml", scan_shape=SCAN) == labels


@needs_paper
def test_paper_adaptive_50_exact_repeats_dropped():
    import yaml

    raw = yaml.safe_load((PAPER_LABELS / "paper_data_50_binary_frame_1_labels.yaml").read_text())["labels"]
    assert len(raw) == 50
    labels = import_paper_yaml(PAPER_LABELS / "paper_data_50_binary_frame_1_labels.yaml", scan_shape=SCAN)
    assert len(labels) == 48  # two positions were listed twice with the same label


@needs_paper
def test_paper_adaptive_100_conflict_is_reported():
    # The authors' 100-label adaptive file labels x=0, y=22 both 'na' and 'horizontal'.
    with pytest.raises(GhostmapError) as excinfo:
        import_paper_yaml(PAPER_LABELS / "paper_data_100_binary_frame_1_labels.yaml")
    message = one_line_error(excinfo)
    assert "paper_data_100_binary_frame_1_labels.yaml line" in message
    assert "position x=0, y=22 is labelled" in message
