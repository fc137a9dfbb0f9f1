"""Recipes: every shipped recipe loads and its method settings are valid; bad files are named."""

import pytest
from click.testing import CliRunner

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.errors import RecipeError
from wsss_keras.methods.doei import DOEI
from wsss_keras.methods.toco import toco_losses
from wsss_keras.recipes import available, load_recipe


def test_every_shipped_recipe_loads_with_valid_settings():
    names = available()
    assert {"toco_voc", "toco_doei_voc", "toco_coco", "toco_doei_coco", "toco_synthetic_cpu", "toco_doei_synthetic_cpu"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        assert recipe["recipe"]["name"] == name
        toco_losses(recipe.get("losses"), source=name)
        if "doei" in recipe:
            DOEI(**recipe["doei"])


def test_extends_merges_tables_key_by_key():
    coco = load_recipe("toco_doei_coco")
    assert coco["train"]["steps"] == 80000 and coco["train"]["batch_size"] == 8  # from toco_coco
    assert coco["train"]["learning_rate"] == 6e-5 and coco["train"]["crop_size"] == 448  # from toco_voc
    assert coco["losses"]["high_threshold"] == 0.65 and coco["losses"]["ptc_weight"] == 0.2
    assert coco["doei"] == {}
    assert "doei" not in load_recipe("toco_coco")
    assert load_recipe("toco_doei_voc")["doei"]["sigma_rgb"] == 0.1


def test_bad_recipes_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[recipe]\nname = "x"\nmethod = "toco"\n[train]\nstpes = 3\n')
    with pytest.raises(RecipeError, match=r"bad.toml.*stpes"):
        load_recipe(str(path))
    path.write_text('[recipe]\nname = "x"\nmethod = "tocoo"\n')
    with pytest.raises(RecipeError, match="tocoo"):
        load_recipe(str(path))
    path.write_text('[recipe]\nname = "x"\nextends = "bad.toml"\nmethod = "toco"\n')
    with pytest.raises(RecipeError, match="loops"):
        load_recipe(str(path))
    path.write_text("[recipe\n")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(path))
    with pytest.raises(RecipeError, match="no shipped recipe"):
        load_recipe("no_such_recipe")


def test_paper_recipe_without_weights_is_a_one_line_error(tmp_path):
    data = tiny_synthetic(tmp_path / "data")
    result = CliRunner().invoke(cli, ["train", "toco_voc", "--data", data, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "--weights" in result.output and "Traceback" not in result.output


def test_amr_recipes_run_the_irn_pipeline_stages(tmp_path):
    from wsss_keras.pipelines.amr import AMR_KNOBS
    from wsss_keras.pipelines.run import METHOD_STAGES, method_stages

    for name in ("amr_voc", "amr_coco", "amr_synthetic_cpu"):
        recipe = load_recipe(name)
        assert method_stages(recipe) == METHOD_STAGES["amr"]
        assert recipe["pseudo_labels"]["mode"] == "random_walk"
        assert set(recipe.get("amr", {})) <= set(AMR_KNOBS) | {"backbone", "init_compensation"}
    coco = load_recipe("amr_coco")
    assert coco["train"]["split"] == "train2014" and coco["ir_labels"]["fg_threshold"] == 0.60  # from amr_voc
    assert method_stages(load_recipe("toco_voc")) == ("train", "cams", "pseudo_labels", "predict", "evaluate")

    root = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    result = CliRunner().invoke(cli, ["run", "amr_synthetic_cpu", "--data", root, "--out", str(tmp_path / "o"), "--stages", "train,walk"])
    assert result.exit_code == 2 and "['walk']" in result.output and "train_irn" in result.output
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0 and "stages (amr)" in info.output and "amr_synthetic_cpu" in info.output


def test_amr_stage_b_without_stage_a_names_the_missing_network(tmp_path):
    from wsss_keras.pipelines.run import run_recipe

    root = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    with pytest.raises(RecipeError, match=r"amr_synthetic_cpu.toml: .*cam_network.keras does not exist.*wsss train-cam"):
        run_recipe(load_recipe("amr_synthetic_cpu"), root, str(tmp_path / "run"), stages=("train",), echo=lambda line: None)


def test_ssc_recipes_run_superpixels_then_the_irn_pipeline(tmp_path):
    from wsss_keras.pipelines.run import METHOD_STAGES, method_stages
    from wsss_keras.pipelines.ssc import SSC_KNOBS

    extra = {"backbone", "loss_network_weights", "random_loss_network", "self_modulation_start", "self_modulation_start_fraction",
             "decoder_learning_rate", "decoder_beta_1", "decoder_beta_2"}
    for name in ("ssc_voc", "ssc_synthetic_cpu"):
        recipe = load_recipe(name)
        assert method_stages(recipe) == METHOD_STAGES["ssc"]
        assert set(recipe["ssc"]) <= set(SSC_KNOBS) | extra
    voc = load_recipe("ssc_voc")
    assert voc["train"]["batch_size"] == 6 and voc["train"]["steps"] == 17630 and voc["ssc"]["drs_delta"] == 0.55
    assert voc["ir_labels"]["bg_threshold"] == 0.10 and voc["pseudo_labels"]["power"] == 1.0
    info = CliRunner().invoke(cli, ["info"])
    assert info.exit_code == 0 and "stages (ssc)" in info.output and "ssc_synthetic_cpu" in info.output


def test_ssc_without_its_vgg_weights_says_which_key_to_set(tmp_path):
    from wsss_keras.pipelines.run import run_recipe

    root = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    recipe = load_recipe("ssc_synthetic_cpu")
    recipe["ssc"]["random_loss_network"] = False
    with pytest.raises(RecipeError, match=r"ssc_synthetic_cpu.toml: .*loss_network_weights.*vgg19-dcbb9e9d.pth"):
        run_recipe(recipe, root, str(tmp_path / "run"), stages=("superpixels", "train"), echo=lambda line: None)
    recipe["ssc"]["loss_network_weights"] = str(tmp_path / "missing_vgg19.pth")
    with pytest.raises(RecipeError, match="missing_vgg19.pth.*no such file"):
        run_recipe(recipe, root, str(tmp_path / "run"), stages=("train",), echo=lambda line: None)


def test_ssc_training_without_superpixels_names_the_command(tmp_path):
    from wsss_keras.pipelines.run import run_recipe

    root = tiny_synthetic(tmp_path / "data", n_train=2, n_val=1, size=32)
    with pytest.raises(Exception, match=r"superpixels.*wsss superpixels"):
        run_recipe(load_recipe("ssc_synthetic_cpu"), root, str(tmp_path / "run"), stages=("train",), echo=lambda line: None)
    result = CliRunner().invoke(cli, ["superpixels", root, "--out", str(tmp_path / "sp"), "--segments", "8"])
    assert result.exit_code == 0 and "2 computed" in result.output
