"""`wsss run RECIPE --smoke N`: every stage of the recipe at its sizes for N steps on the first
images of each split, with a table of what each stage cost and whether its outputs are sane."""

import json
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import tiny_amr_recipe, tiny_synthetic
from PIL import Image

from wsss_keras.cli import cli
from wsss_keras.data.layouts import DatasetFolder
from wsss_keras.errors import WSSSError
from wsss_keras.evaluation.cams import save_cams
from wsss_keras.pipelines.smoke import SmokeMeter, smoke_image_count, smoke_run


def test_smoke_run_of_a_shipped_recipe_from_the_command_line(tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=12, n_val=10, size=64)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "toco_synthetic_cpu", "--data", data, "--out", str(out), "--smoke", "3"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "smoke.json").read_text())
    assert [row["stage"] for row in record["stages"]] == ["train", "cams", "pseudo_labels", "predict", "evaluate"]
    # toco_synthetic_cpu trains with batches of 8: each split keeps its first max(4, 8) images.
    assert record["images"] == 8 and record["steps"] == 3
    assert len(list((out / "cams").glob("*.npz"))) == 8 and len(list((out / "predictions").glob("*.png"))) == 8
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["batch_size"] == 8
    train = record["stages"][0]
    assert train["unit"] == "s/step" and train["per_unit"] > 0 and train["output"] == "model.keras: ok"
    assert record["stages"][1]["output"] == "8 in cams/: ok"
    assert "[smoke] train" in result.output and "s/step" in result.output and "s/image" in result.output


def test_smoke_steps_and_steps_do_not_mix(tmp_path):
    result = CliRunner().invoke(cli, ["run", "toco_synthetic_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                      "--smoke", "--steps", "2"])
    assert result.exit_code == 2 and "drop --steps" in result.output


def test_a_split_smaller_than_the_limit_is_kept_whole_and_a_larger_one_cut(tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=6, n_val=3, size=32)
    folder = DatasetFolder(data, limit=4)
    train, val = folder.open("train"), folder.open("val")
    assert len(train) == 4 and len(val) == 3
    whole = DatasetFolder(data).open("train")
    assert train.names == whole.names[:4] and np.array_equal(train.labels, whole.labels[:4])


def test_image_count_covers_the_largest_batch():
    assert smoke_image_count({"recipe": {}, "train": {"batch_size": 2}}) == 4
    assert smoke_image_count({"recipe": {}, "train": {"batch_size": 4}, "irn": {"batch_size": 32}}) == 32


def _meter(tmp_path):
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32, classes="3")
    recipe = {"recipe": {"name": "t", "method": "toco"}, "train": {"batch_size": 8}}
    return SmokeMeter(recipe, DatasetFolder(data), str(tmp_path / "run"))


def test_outputs_outside_their_range_are_not_sane(tmp_path):
    meter = _meter(tmp_path)
    cams = tmp_path / "run" / "cams"
    cams.mkdir(parents=True)
    save_cams(str(cams / "a.npz"), np.full((8, 8, 2), 1.5, np.float32), np.array([1, 2]))
    labels = tmp_path / "run" / "pseudo_labels"
    labels.mkdir()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(labels / "a.png")  # 3 classes + background: 0..3 or 255
    with meter("cams"):
        pass
    with meter("pseudo_labels"):
        pass
    assert "outside [0, 1]" in meter.rows[0]["output"]
    assert "holds label 7, outside 0..3 and 255" in meter.rows[1]["output"]
    assert not meter.sane()


def test_out_of_memory_names_the_stage_and_the_batch_to_lower(tmp_path):
    meter = _meter(tmp_path)
    with pytest.raises(WSSSError, match=r"\[train\] ran out of memory at .* GiB; set \[train\] accumulate = 2 \(or more\) in .* to keep "
                                           r"the batch of 8 in smaller micro-batches, or lower batch_size"):
        with meter("train"):
            raise MemoryError
    assert meter.rows[0]["output"] == "out of memory"
    meter.recipe["train"]["accumulate"] = 2  # already accumulating: the fix doubles it
    with pytest.raises(WSSSError, match=r"set \[train\] accumulate = 4 \(or more\)"):
        with meter("train"):
            raise MemoryError
    with pytest.raises(ValueError):  # anything else is a bug and stays itself
        with meter("cams"):
            raise ValueError("boom")


def test_host_memory_running_out_is_reported_before_the_kernel_kills(tmp_path):
    # The kernel's out-of-memory kill is a SIGKILL no except sees: the watchdog reports first.
    from wsss_keras.pipelines.smoke import _MemoryWatchdog

    readings = iter([(8 << 30, 16 << 30), (4 << 30, 16 << 30), (100 << 20, 16 << 30)])
    fake = lambda: next(readings, (100 << 20, 16 << 30))
    messages = []
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32, classes="3")
    recipe = {"recipe": {"name": "t", "method": "toco"}, "train": {"batch_size": 8}}
    meter = SmokeMeter(recipe, DatasetFolder(data), str(tmp_path / "run"), exit_now=messages.append,
                       watchdog=lambda on_exhausted: _MemoryWatchdog(on_exhausted, interval=0.01, read=fake))
    with meter("train"):
        deadline = time.monotonic() + 10
        while not messages and time.monotonic() < deadline:
            time.sleep(0.01)
        saved = json.loads((tmp_path / "run" / "smoke.json").read_text())
    assert len(messages) == 1  # once, at the third reading (100 MiB of 16 GiB is under 2 %)
    assert re.fullmatch(r"\[train\] ran out of memory at [0-9.]+ GiB; set \[train\] accumulate = 2 \(or more\) in .* "
                        r"to keep the batch of 8 in smaller micro-batches, or lower batch_size\.", messages[0])
    assert saved["stages"][0]["stage"] == "train"
    assert saved["stages"][0]["output"] == "out of memory (host, about to be killed)"
    assert saved["stages"][0]["host_peak"] > 0


def test_the_memory_watchdog_stays_quiet_with_memory_to_spare():
    from wsss_keras.pipelines.smoke import _MemoryWatchdog

    fired = []
    with _MemoryWatchdog(lambda: fired.append(1), interval=0.01, read=lambda: (3 << 30, 16 << 30)):
        time.sleep(0.1)
    assert fired == []


def test_smoke_run_of_the_whole_amr_pipeline(tmp_path):
    recipe = tiny_amr_recipe(tmp_path)
    data = tiny_synthetic(tmp_path / "data", n_train=6, n_val=4, size=32)
    rows = smoke_run(recipe, data, str(tmp_path / "run"), steps=2, echo=lambda line: None)
    assert [row["stage"] for row in rows] == ["train_cam", "train", "cams", "ir_labels", "train_irn", "pseudo_labels",
                                              "train_seg", "predict", "evaluate"]
    for row in rows:
        if row["stage"].startswith("train"):
            assert row["unit"] == "s/step" and row["output"].endswith(": ok"), row
        elif row["stage"] != "evaluate":
            assert row["unit"] == "s/image" and row["output"].endswith(": ok"), row


def test_a_stage_of_another_method_is_refused(tmp_path):
    result = CliRunner().invoke(cli, ["run", "toco_synthetic_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                                      "--stages", "train_cam"])
    assert result.exit_code == 2 and "not a stage of toco_synthetic_cpu, which runs train, cams" in result.output
