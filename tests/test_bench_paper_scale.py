"""bench_paper_scale's way round a batch that does not fit: the same global batch in micro-batches."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

import bench_paper_scale

from wsss_keras.recipes import load_recipe


def test_accumulating_recipe_keeps_the_batch_and_sets_accumulate(tmp_path):
    path = bench_paper_scale.accumulating_recipe("toco_coco", "train", 4, str(tmp_path))
    recipe = load_recipe(path)
    shipped = load_recipe("toco_coco")
    assert recipe["train"]["accumulate"] == 4
    assert recipe["train"]["batch_size"] == shipped["train"]["batch_size"] == 8
    assert recipe["recipe"]["name"] == "toco_coco_accumulate4"
    # Everything else is the shipped recipe's.
    assert recipe["losses"] == shipped["losses"] and recipe["predict"] == shipped["predict"]
    # A batch of 8 does not split into 3 micro-batches: no file.
    assert bench_paper_scale.accumulating_recipe("toco_coco", "train", 3, str(tmp_path)) is None


def test_a_recipe_file_extends_by_its_absolute_path(tmp_path):
    own = tmp_path / "mine.toml"
    own.write_text('[recipe]\nextends = "amr_voc"\nname = "mine"\n\n[segmentation]\nbatch_size = 4\n')
    path = bench_paper_scale.accumulating_recipe(str(own), "segmentation", 2, str(tmp_path / ".."))
    recipe = load_recipe(path)
    assert recipe["segmentation"]["batch_size"] == 4 and recipe["segmentation"]["accumulate"] == 2
    assert recipe["recipe"]["method"] == "amr"


def test_the_smoke_runs_out_of_memory_line_names_the_retry(tmp_path, monkeypatch):
    log_line = ("Error: [train] ran out of memory at 23.11 GiB; set [train] accumulate = 4 (or more) in "
                "/x/toco_coco_accumulate2.toml to keep the batch of 8 in smaller micro-batches, or lower batch_size.")

    def fake_run(command, **kwargs):
        kwargs["stdout"].write("[train] step 1/2\n" + log_line + "\n")
        return type("Done", (), {"returncode": 1})()

    monkeypatch.setattr(bench_paper_scale.subprocess, "run", fake_run)
    record = bench_paper_scale.run_one("toco_coco", "tensorflow", "coco", str(tmp_path), str(tmp_path / "out"), 2,
                                       None, None, 60, str(tmp_path))
    assert record["status"] == "exit 1"
    assert record["fits_with"] == {"table": "train", "accumulate": 4}


def test_a_kernel_kill_names_the_stage_and_the_first_retry(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        kwargs["stdout"].write("[smoke] toco_coco: 2 steps\n[train] compiling the step\n")
        return type("Done", (), {"returncode": -9})()

    monkeypatch.setattr(bench_paper_scale.subprocess, "run", fake_run)
    record = bench_paper_scale.run_one("toco_coco", "tensorflow", "coco", str(tmp_path), str(tmp_path / "out"), 2,
                                       None, None, 60, str(tmp_path))
    assert record["status"].startswith("killed in [train], most likely out of memory")
    assert record["fits_with"] == {"table": "train", "accumulate": 2}


def test_merge_keeps_every_records_order_and_commit(tmp_path):
    import json

    parts = []
    for commit, recipes in (("aaa", ["toco_voc", "amr_voc"]), ("bbb", ["toco_coco"])):
        path = tmp_path / f"{commit}.json"
        path.write_text(json.dumps({"commit": commit, "date": "2026-12-06", "title": "t", "steps": 2, "weights": "fake",
                                    "records": [{"recipe": r, "backend": "tensorflow", "status": "ok", "dataset": "voc",
                                                 "stages": []} for r in recipes]}))
        parts.append(str(path))
    out = tmp_path / "merged.json"
    assert bench_paper_scale.merge(parts, str(out), note="two invocations") == 0
    merged = json.loads(out.read_text())
    assert [r["recipe"] for r in merged["records"]] == ["toco_voc", "amr_voc", "toco_coco"]
    assert merged["commit"] == "aaa, bbb" and merged["note"] == "two invocations"
    assert [p["recipes"] for p in merged["parts"]] == [["toco_voc", "amr_voc"], ["toco_coco"]]
    assert "| toco_coco | tensorflow | CPU |" in merged["markdown"]


def test_projected_hours_only_from_stages_that_have_a_rate():
    stopped = {"recipe": "toco_coco", "backend": "tensorflow", "status": "exit 1", "dataset": "coco", "last_line": "oom",
               "stages": [{"stage": "train", "host_peak": 2 ** 30}]}
    partial = {"recipe": "amr_voc", "backend": "tensorflow", "status": "exit 1", "dataset": "voc", "last_line": "oom",
               "stages": [{"stage": "train_cam", "per_unit": 36.0, "unit": "s/step", "full_steps": 100}]}
    table = bench_paper_scale.markdown([stopped, partial])
    # Stopped in its first stage: nothing to project; stopped later: the stages that ran (3600 s = 1 h).
    assert "| toco_coco | tensorflow | CPU | - |" in table
    assert "| amr_voc | tensorflow | CPU | 1.0 (stages that ran) |" in table
