"""`cls_labels.npy` dictionaries are read without running code a crafted file carries."""

import io
import os
import pickle

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.data import VocDataset
from wsss_keras.data.dataset import read_cls_label_table
from wsss_keras.errors import DataError


def write_npy_pickle(path, payload):
    """A .npy file as numpy.save writes a 0-d object array: a v1.0 header, then the pickle."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": ()})
        handle.write(payload)


class RunsShellCommand:
    """What a crafted file holds: unpickling it calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_toco_style_file_loads(tmp_path):
    # ToCo: image id strings -> one-hot vectors over the 20 foreground classes, numpy.save'd.
    table = {"2007_000032": np.eye(20, dtype=np.uint8)[0], "2007_000039": np.eye(20, dtype=np.uint8)[19]}
    path = str(tmp_path / "cls_labels_onehot.npy")
    np.save(path, table)
    loaded = read_cls_label_table(path)
    assert sorted(loaded) == ["2007_000032", "2007_000039"]
    np.testing.assert_array_equal(loaded["2007_000039"], np.eye(20)[19])
    assert loaded["2007_000039"].dtype == np.uint8


def test_irn_style_file_written_by_numpy_1_loads(tmp_path):
    # IRN: int ids -> float32 vectors, and an older NumPy spells the module numpy.core.multiarray.
    table = {2007000032: np.eye(20, dtype=np.float32)[2], 2007000039: np.float32(1) * np.eye(20, dtype=np.float32)[5]}
    payload = pickle.dumps(np.array(table, dtype=object), protocol=3)
    assert b"numpy._core.multiarray\n" in payload or b"numpy.core.multiarray\n" in payload
    payload = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path = str(tmp_path / "cls_labels.npy")
    write_npy_pickle(path, payload)
    loaded = read_cls_label_table(path)
    assert set(loaded) == {2007000032, 2007000039}
    np.testing.assert_array_equal(loaded[2007000032], np.eye(20)[2])


@pytest.mark.parametrize("where", ["top level", "inside the dictionary"])
def test_file_that_would_run_code_is_refused_unrun(tmp_path, where):
    marker = tmp_path / "code_ran"
    evil = RunsShellCommand(f"touch {marker}")
    content = evil if where == "top level" else {"train_00000": np.zeros(6, np.float32), "train_00001": evil}
    path = str(tmp_path / "cls_labels.npy")
    np.save(path, np.array(content, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cls_labels\.npy: refused: unpickling it would call (posix|os)\.system"):
        read_cls_label_table(path)
    assert not marker.exists()

    root = tiny_synthetic(tmp_path / "s", n_train=2, n_val=1)
    with pytest.raises(DataError, match="refused"):
        VocDataset(root, "train", labels_from="cls_labels", cls_labels=path)
    result = CliRunner().invoke(cli, ["data", "stats", root, "--split", "train", "--cls-labels", path])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}: refused"), result.output
    assert not marker.exists()


def test_other_contents_are_refused_with_the_fix(tmp_path):
    plain = str(tmp_path / "plain.npy")
    np.save(plain, np.zeros((3, 20), np.float32))
    with pytest.raises(DataError, match=r"plain\.npy: holds a float32 array of shape \(3, 20\), not a dictionary; save a dict"):
        read_cls_label_table(plain)
    listed = str(tmp_path / "list.npy")
    write_npy_pickle(listed, pickle.dumps(np.array(None, dtype=object), protocol=3))
    with pytest.raises(DataError, match=r"list\.npy: holds a NoneType, not a dictionary"):
        read_cls_label_table(listed)
    pickled = str(tmp_path / "pickled.npy")
    with open(pickled, "wb") as handle:
        pickle.dump({"a": 1}, handle)
    with pytest.raises(DataError, match=r"pickled\.npy: not a NumPy \.npy file"):
        read_cls_label_table(pickled)
    cut = str(tmp_path / "cut.npy")
    buffer = io.BytesIO()
    np.save(buffer, {"train_00000": np.zeros(20, np.float32)})
    with open(cut, "wb") as handle:
        handle.write(buffer.getvalue()[:-40])
    with pytest.raises(DataError, match=r"cut\.npy: a damaged \.npy file"):
        read_cls_label_table(cut)
