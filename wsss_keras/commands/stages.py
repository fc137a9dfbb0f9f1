"""`wsss superpixels`, `wsss irn labels|train|walk`, `wsss train-cam` and `wsss train-seg`: single
stages of the multi-stage pipeline, each reading and writing files in a run folder (see `wsss run`)."""

import click

from wsss_keras.commands.options import ErrorReportingGroup, dataset_options, open_dataset_from_options, progress_printer
from wsss_keras.commands.run import _common_options, _recipe_argument


def _run_stage(stage, recipe, data_dir, out_dir, weights=None, steps=None, overwrite=False):
    from wsss_keras.pipelines.run import run_recipe
    from wsss_keras.recipes import load_recipe

    run_recipe(
        load_recipe(recipe), data_dir, out_dir, weights=weights, stages=(stage,), steps=steps, overwrite=overwrite,
        echo=click.echo, progress=progress_printer,
    )


def _io_options(function):
    options = [
        click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder (VOC or COCO layout, or the synthetic data)."),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="The run folder: reads its cams/, ir_labels/, irn.keras; writes the stage's output there."),
        click.option("--overwrite", is_flag=True, help="Redo images whose output exists (default: skip them, so runs resume)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.group("irn", cls=ErrorReportingGroup)
def irn():
    """IRN refinement: confident labels, IRNet training, random-walk pseudo-labels."""


@irn.command("labels")
@_recipe_argument
@_io_options
def irn_labels(recipe, data_dir, out_dir, overwrite):
    """Confident fg/bg labels from OUT/cams into OUT/ir_labels (RECIPE's [ir_labels])."""
    _run_stage("ir_labels", recipe, data_dir, out_dir, overwrite=overwrite)


@irn.command("train")
@_recipe_argument
@_common_options
def irn_train(recipe, data_dir, out_dir, weights, steps):
    """Train IRNet on OUT/ir_labels; saves OUT/irn.keras (RECIPE's [irn])."""
    _run_stage("train_irn", recipe, data_dir, out_dir, weights=weights, steps=steps, overwrite=True)


@irn.command("walk")
@_recipe_argument
@_io_options
def irn_walk(recipe, data_dir, out_dir, overwrite):
    """Random-walk pseudo-labels from OUT/cams and OUT/irn.keras into OUT/pseudo_labels."""
    from wsss_keras.recipes import load_recipe

    loaded = load_recipe(recipe)
    if loaded.get("pseudo_labels", {}).get("mode") != "random_walk":
        raise click.UsageError(
            f"{loaded['recipe']['path']}: [pseudo_labels] mode is not \"random_walk\"; set it there (the walk's "
            "settings live in that table) or use `wsss pseudo-labels` for the other modes."
        )
    _run_stage("pseudo_labels", recipe, data_dir, out_dir, overwrite=overwrite)


@click.command("superpixels")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@dataset_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Cache folder: <id>.png per image (SSC's RGB id encoding) and superpixels.json.")
@click.option("--segments", default=200, show_default=True, type=click.IntRange(min=2), help="SLIC's target number of superpixels per image.")
@click.option("--compactness", default=10.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True), help="SLIC's colour/space trade-off (higher: squarer).")
@click.option("--sigma", default=1.0, show_default=True, type=click.FloatRange(min=0.0), help="Gaussian smoothing before SLIC.")
@click.option("--overwrite", is_flag=True, help="Recompute every image (default: skip those already in OUT, so runs resume).")
def superpixels(root, split, labels_from, cls_labels, instances, class_names, out_dir, segments, compactness, sigma, overwrite):
    """SLIC superpixels (scikit-image) of every image of ROOT's split, cached in OUT for SSC and SSR.

    A recipe's run computes them itself ([superpixels]); name this folder there (`folder`) to
    share one cache between runs.
    """
    from wsss_keras.ops.superpixels import compute_superpixels

    dataset = open_dataset_from_options(root, split, labels_from, cls_labels, instances, class_names)
    written = compute_superpixels(
        dataset, out_dir, n_segments=segments, compactness=compactness, sigma=sigma,
        progress=progress_printer("superpixels"), overwrite=overwrite,
    )
    click.echo(f"{written} computed, {len(dataset) - written} already there ({dataset.description}) -> {out_dir}")


def register(cli):
    cli.add_command(irn)
    cli.add_command(superpixels)

    @cli.command("train-cam")
    @_recipe_argument
    @_common_options
    def train_cam(recipe, data_dir, out_dir, weights, steps):
        """Train RECIPE's plain CAM network ([cam_network]); saves OUT/cam_network.keras."""
        _run_stage("train_cam", recipe, data_dir, out_dir, weights=weights, steps=steps, overwrite=True)

    @cli.command("train-seg")
    @_recipe_argument
    @_common_options
    def train_seg(recipe, data_dir, out_dir, weights, steps):
        """Train RECIPE's segmentation network ([segmentation]) on OUT/pseudo_labels; saves OUT/segmenter.keras.

        --weights here is the segmentation backbone's ImageNet checkpoint (e.g. ResNet-101).
        """
        from wsss_keras.pipelines.segmentation import train_segmenter
        from wsss_keras.recipes import load_recipe, with_steps

        loaded = with_steps(load_recipe(recipe), steps)
        train_segmenter(loaded, data_dir, out_dir, weights=weights, steps=steps, echo=click.echo)

    # `wsss train-student`, the edge student trained after a run's stages.
    from wsss_keras.commands import student

    student.register(cli)
