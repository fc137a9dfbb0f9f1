"""`wsss run` opens the dataset once: every stage of a run shares one index per split
(`wsss_keras.data.layouts.DatasetFolder`), while a stage called alone still opens a folder."""

import numpy as np
from helpers import tiny_amr_recipe, tiny_synthetic

from wsss_keras.data import layouts
from wsss_keras.data.layouts import DatasetFolder, open_split
from wsss_keras.pipelines.run import METHOD_STAGES, run_recipe


def counting_opens(monkeypatch):
    """Wrap `open_dataset` where the pipelines look it up; returns the {(folder, split): count} it fills."""
    opened, original = {}, layouts.open_dataset

    def counted(root, split, **options):
        opened[(root, split)] = opened.get((root, split), 0) + 1
        return original(root, split, **options)

    monkeypatch.setattr(layouts, "open_dataset", counted)
    return opened


def test_an_amr_run_opens_each_split_once(tmp_path, monkeypatch):
    recipe = tiny_amr_recipe(tmp_path)
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32)
    opened = counting_opens(monkeypatch)
    metrics = run_recipe(recipe, data, str(tmp_path / "run"), steps=1, echo=lambda line: None)

    assert len(METHOD_STAGES["amr"]) == 9 and {"cams", "pseudo_labels", "segmentation"} <= set(metrics)
    assert opened == {(data, "train"): 1, (data, "val"): 1}


def test_a_shared_split_is_the_dataset_a_fresh_open_gives(tmp_path, monkeypatch):
    data = tiny_synthetic(tmp_path / "data", n_train=4, n_val=2, size=32)
    opened = counting_opens(monkeypatch)
    folder = DatasetFolder(data)
    shared = open_split(folder, "train")
    assert open_split(folder, "train") is shared and opened == {(data, "train"): 1}
    fresh = open_split(data, "train")  # a folder (a stage run alone) is opened every time
    assert opened == {(data, "train"): 2} and fresh is not shared
    assert type(shared) is type(fresh) and shared.description == fresh.description
    assert (shared.names, shared.image_paths, shared.label_map_paths, shared.class_names) == (
        fresh.names, fresh.image_paths, fresh.label_map_paths, fresh.class_names)
    np.testing.assert_array_equal(shared.labels, fresh.labels)
