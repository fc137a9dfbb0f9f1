"""`wsss train` and `wsss run`: a recipe's training, and all its stages end to end."""

import click

from wsss_keras.commands.options import WEIGHTS, progress_printer, training_flags

DEFAULT_SMOKE_STEPS = 3  # a bare --smoke: enough steps to see a second compilation


def _recipe_argument(function):
    return click.argument("recipe", metavar="RECIPE")(function)


def _common_options(function):
    options = [
        click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder (VOC or COCO layout, or the synthetic data)."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder for the model, CAMs, labels, predictions and metrics."),
        click.option("--weights", default=None, type=WEIGHTS, help=(
            "Local pretrained backbone weights (timm/HF safetensors, .pth, keras-hub preset); overrides the recipe's. "
            "`random`: every backbone of the run untrained (CLIP, DINO, DeepLab's and the loss networks too), for "
            "smoke runs without downloads.")),
        click.option("--steps", default=None, type=click.IntRange(min=1), help=(
            "Train every stage for N steps instead of the recipe's, and scale what the recipe counts in steps by N / "
            "that stage's steps: warm-up, ToCo's loss start steps (DOEI's schedule follows the new length), SSC's "
            "self-modulation start given in steps, SSR's prototype refresh period and CMPA warm-up."
        )),
    ]
    for option in reversed(options):
        function = option(function)
    return training_flags(function)


def register(cli):
    @cli.command("train")
    @_recipe_argument
    @_common_options
    def train_command(recipe, data_dir, out_dir, weights, steps):
        """Train RECIPE's model (a recipe file, or a shipped recipe's name; see `wsss info`).

        Saves OUT/model.keras, which loads on every backend.
        """
        from wsss_keras.pipelines.train import train
        from wsss_keras.recipes import load_recipe

        train(load_recipe(recipe), data_dir, out_dir, weights=weights, steps=steps, echo=click.echo)

    @cli.command("run")
    @_recipe_argument
    @_common_options
    @click.option("--stages", default=None, help="Comma list of the stages to run, in order [default: all of the method's; `wsss info` lists them].")
    @click.option("--overwrite", is_flag=True, help="Redo stages whose outputs already exist (default: skip them, so runs resume).")
    @click.option("--smoke", type=click.IntRange(min=1), is_flag=False, flag_value=DEFAULT_SMOKE_STEPS, default=None,
                  metavar="[N]", help=(
                      f"Check the recipe before a long run: every stage at the recipe's real sizes for N training steps "
                      f"(alone: {DEFAULT_SMOKE_STEPS}) on each split's first images, then a table of seconds per step or "
                      "image, peak memory, compilations and whether the outputs are sane."))
    def run_command(recipe, data_dir, out_dir, weights, steps, stages, overwrite, smoke):
        """Run RECIPE end to end: train, CAMs, pseudo-labels, predictions, evaluation.

        The multi-stage methods add their stages: superpixels (SSC), the CAM network (AMR), IR
        labels, IRNet, the random walk and the segmentation network. WeCLIP and SSR's CPU recipes
        first train a tiny CLIP (train_clip), SSR computes superpixels and their colour regions
        (and, with `[dino] source = "train"`, trains a small ViT DINO-style as its DINO: train_dino),
        and their pseudo-labels are the methods' online ones. Each stage writes files into OUT and
        is skipped when they are there already.
        """
        from wsss_keras.pipelines.run import method_stages, run_recipe
        from wsss_keras.recipes import load_recipe

        loaded = load_recipe(recipe)
        chosen = None
        if stages is not None:
            chosen = tuple(stage.strip().replace("-", "_") for stage in stages.split(",") if stage.strip())
            unknown = [stage for stage in chosen if stage not in method_stages(loaded)]
            if unknown:
                hint = (" train_student needs a [student] table in the recipe (or run `wsss train-student` on the "
                        "finished run)." if "train_student" in unknown else "")
                raise click.BadParameter(
                    f"{unknown}: not a stage of {loaded['recipe']['name']}, which runs "
                    f"{', '.join(method_stages(loaded))}.{hint}",
                    param_hint="--stages",
                )
        if smoke is not None:
            if steps is not None:
                raise click.UsageError("--smoke N sets the steps of every training stage; drop --steps.")
            from wsss_keras.pipelines.smoke import smoke_run

            smoke_run(loaded, data_dir, out_dir, steps=smoke, weights=weights, stages=chosen, overwrite=overwrite,
                      echo=click.echo, progress=progress_printer)
            return
        run_recipe(
            loaded, data_dir, out_dir, weights=weights, stages=chosen, steps=steps,
            overwrite=overwrite, echo=click.echo, progress=progress_printer,
        )
