"""Recipes: every shipped recipe loads and its method settings are valid; bad files are named."""

import re

import pytest
from click.testing import CliRunner

from helpers import tiny_synthetic
from wsss_keras.cli import cli
from wsss_keras.errors import RecipeError
from wsss_keras.methods.doei import DOEI
from wsss_keras.methods.toco import toco_losses
from wsss_keras.recipes import available, load_recipe, with_steps
from wsss_keras.step_counts import STEP_COUNTS


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
    # ToCo's COCO script hard-codes CTC's temperature 1.0; VOC's passes its --temp, 0.5.
    assert coco["losses"]["ctc_temperature"] == 1.0 and "ctc_temperature" not in load_recipe("toco_voc")["losses"]
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


def write_recipe(folder, name, text):
    path = folder / f"{name}.toml"
    path.write_text(f'[recipe]\nname = "{name}"\n{text}')
    return str(path)


@pytest.mark.parametrize("parent,tables,message", [
    ("amr_synthetic_cpu", "[doei]\nsigma_rgb = 0.1\n", r"\[doei\] is not read by amr recipes \(only by toco\); remove the table"),
    ("weclip_synthetic_cpu", "[losses]\nseg_weight = 0.1\n", r"\[losses\] is not read by weclip recipes"),
    ("toco_synthetic_cpu", "[train]\nlong_side = [320, 640]\n", r"\[train\] long_side is not read by toco recipes \(only by amr, ssc\); remove it"),
    ("toco_synthetic_cpu", "[train]\ncutout_count = 3\n", r"\[train\] cutout_count is not read by toco recipes \(only by amr\)"),
    ("weclip_synthetic_cpu", "[train]\ncutout_size = 8\n", r"\[train\] cutout_size is not read by weclip recipes"),
    ("ssc_synthetic_cpu", "[train]\ncutout_count = 3\n", r"\[train\] cutout_count is not read by ssc recipes \(only by amr\)"),
    ("weclip_synthetic_cpu", "[ssr]\nseg_weight = 0.1\n", r"\[ssr\] is not read by weclip recipes \(only by ssr\)"),
    ("ssr_synthetic_cpu", "[weclip]\nlogit_scale = 1.0\n", r"\[weclip\] is not read by ssr recipes"),
    ("toco_synthetic_cpu", "[pseudo_labels]\nexp_times = 3\n", r"\[pseudo_labels\] exp_times is read only when mode = 'random_walk'.*'par'"),
    ("amr_synthetic_cpu", "[pseudo_labels]\nmode = \"par\"\n", r"amr_synthetic_cpu.toml \(extended by .*child.toml\): \[pseudo_labels\] exp_times is read only"),
    ("weclip_synthetic_cpu", "[clip]\ntokenizer = \"bpe.txt.gz\"\n", r"\[clip\] tokenizer is read only when source = 'openai'.*'train'"),
    ("toco_synthetic_cpu", "[train]\nmomentum = 0.9\n", r"\[train\] momentum is SGD's.*'adamw'; remove it or set optimizer = \"sgd\""),
    ("toco_synthetic_cpu", "[train]\nstpes = 3\n", r"\[train\] stpes is not a known key"),
])
def test_a_table_or_key_the_method_would_ignore_is_refused(tmp_path, parent, tables, message):
    path = write_recipe(tmp_path, "child", f'extends = "{parent}"\n{tables}')
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(path)
    assert "\n" not in str(error.value) and re.match(r"\S+\.toml( \(extended by \S+\.toml\))?: \[", str(error.value))


def test_the_error_names_the_file_that_set_the_key(tmp_path):
    write_recipe(tmp_path, "parent", 'extends = "toco_synthetic_cpu"\n[train]\nlong_side = [80, 160]\n')
    path = write_recipe(tmp_path, "child", 'extends = "parent.toml"\n[train]\nsteps = 10\n')
    with pytest.raises(RecipeError, match=r"^\S*parent.toml \(extended by \S*child.toml\): \[train\] long_side"):
        load_recipe(path)


def test_a_recipe_of_another_method_inherits_only_what_its_method_reads(tmp_path):
    ssr = load_recipe("ssr_synthetic_cpu")  # extends weclip_synthetic_cpu, whose [weclip] SSR does not read
    assert "weclip" not in ssr and ssr["ssr"]["gradcam_softmax"] == "all" and ssr["clip"]["token_weight"] == 1.0
    # AMR's recipe as a ToCo parent: [cam_network], [amr] and [train] long_side stay behind.
    path = write_recipe(tmp_path, "toco_from_amr", 'extends = "amr_synthetic_cpu"\nmethod = "toco"\n[train]\noptimizer = "sgd"\n')
    toco = load_recipe(path)
    assert "cam_network" not in toco and "amr" not in toco and "long_side" not in toco["train"]
    assert toco["train"]["momentum"] == 0.9 and toco["irn"]["radius"] == 5  # what ToCo recipes may hold


def test_with_steps_sets_every_stage_and_scales_what_is_counted_in_steps():
    voc = load_recipe("toco_voc")  # 20,000 steps, warm-up 1,500, seg + reg from step 2,001
    short = with_steps(voc, 2000)
    assert short["train"]["steps"] == 2000 and short["train"]["warmup_steps"] == 150
    assert short["losses"]["seg_start"] == short["losses"]["reg_start"] == 200
    assert voc["train"]["steps"] == 20000 and voc["losses"]["seg_start"] == 2001  # the input is left alone
    assert with_steps(voc, None) is voc and with_steps(short, 2000) == short
    coco = with_steps(load_recipe("toco_coco"), 8000)  # ptc / ctc / aux labels from 12,001 of 80,000
    assert coco["losses"]["ptc_start"] == coco["losses"]["ctc_start"] == coco["losses"]["aux_pseudo_labels_until"] == 1200
    plain = with_steps({"recipe": {"name": "x", "method": "toco"}}, 100)  # ToCo's defaults: 20,000, 1,500, 2,001
    assert plain["train"] == {"steps": 100, "warmup_steps": 8} and plain["losses"] == {"seg_start": 10, "reg_start": 10}
    ssr = with_steps(load_recipe("ssr_voc"), 3000)  # prototypes every 5,000 of 30,000 steps, warm-up 50
    assert ssr["train"]["steps"] == 3000 and ssr["ssr"]["prototype_refresh"] == 500 and ssr["train"]["warmup_steps"] == 5
    assert ssr["ssr"]["cmpa_warmup_steps"] == 50  # SSR's default 500 of the 30,000 steps
    assert "steps" not in ssr.get("clip", {})  # pretrained CLIP: nothing trained
    tiny = with_steps(load_recipe("ssr_synthetic_cpu"), 1)
    assert tiny["clip"]["steps"] == 1 and tiny["ssr"]["prototype_refresh"] == 1  # a period stays >= 1
    amr = with_steps(load_recipe("amr_voc"), 100)
    assert [amr[table]["steps"] for table in ("cam_network", "train", "irn", "segmentation")] == [100] * 4
    ssc = load_recipe("ssc_synthetic_cpu")
    ssc["ssc"]["self_modulation_start"] = 300  # of 900 steps
    assert with_steps(ssc, 90)["ssc"]["self_modulation_start"] == 30


def test_every_shipped_recipe_keeps_its_shape_under_steps():
    for name in available():
        recipe = load_recipe(name)
        for steps in (1, 10, 123):
            scaled = with_steps(recipe, steps)
            for stage, tables in STEP_COUNTS[recipe["recipe"]["method"]].items():
                if stage in recipe and (stage not in ("clip", "dino") or recipe[stage].get("source") == "train"):
                    assert scaled[stage]["steps"] == steps, (name, stage)
                    warmup = recipe[stage].get("warmup_steps", 0)
                    assert scaled[stage].get("warmup_steps", 0) == round(warmup * steps / recipe[stage]["steps"]), (name, stage)
