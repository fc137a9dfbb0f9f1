"""SSR's data and training extras on top of the WeCLIP stages (`wsss_keras.pipelines.weclip`).

- `make_regions` (stage `superpixels`, after SLIC): SGC's colour regions, the SLIC superpixels
  of each training image grouped by K-means on their mean CIE-Lab colour (spec §2.6.3,
  [UNSPEC] k = 8), cached as `regions/<id>.png` in the superpixels' encoding. Computed once at
  the image's size and carried through the training crops by the loader (spec §2.1 step 8,
  option b), with 0 for the crop's padding, which is never a target.
- `load_dino`: the frozen DINO ViT-S/16 of `[dino] weights` (a local
  `dino_deitsmall16_pretrain.pth`); without one, SGC's affinity is CLIP's alone.
- `prototype_refresh`: CMPA's image prototypes, rebuilt every `prototype_refresh` steps
  (`[ssr] prototype_bank`): "epoch", at the start too, from a no-grad pass over every training
  batch of the current epoch (the paper's whole training set); "recent", from the loss
  features the model remembered over the last `prototype_refresh` steps (the spec's cheaper
  memory, at most `prototype_bank_size` per class).
"""

import json
import os

from wsss_keras.errors import DataError
from wsss_keras.recipes import recipe_error, section

REGION_DIR = "regions"
REGION_DEFAULTS = {"colour_clusters": 8, "position_weight": 0.0}


def region_folder(recipe, out_dir):
    """`[superpixels] regions_folder`, else `<out_dir>/regions`."""
    return section(recipe, "superpixels").get("regions_folder") or os.path.join(out_dir, REGION_DIR)


def make_regions(recipe, data_dir, out_dir, progress=None, overwrite=False, echo=print):
    """Colour regions of the `[train]` split's superpixels; returns how many were written."""
    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.ops.region_masks import colour_regions
    from wsss_keras.ops.superpixels import META_FILE, SuperpixelCache, write_ids_png
    from wsss_keras.pipelines.cams import run_per_image
    from wsss_keras.pipelines.ssc import superpixel_folder

    settings = {key: section(recipe, "superpixels").get(key, default) for key, default in REGION_DEFAULTS.items()}
    clusters = int(settings["colour_clusters"])
    if clusters < 1:
        raise recipe_error(recipe, f"[superpixels] colour_clusters = {clusters}; give at least 1 (SSR's spec suggests 8).")
    dataset = open_dataset(data_dir, section(recipe, "train").get("split", "train"))
    superpixels = SuperpixelCache(superpixel_folder(recipe, out_dir))
    folder = region_folder(recipe, out_dir)
    os.makedirs(folder, exist_ok=True)
    meta_path = os.path.join(folder, META_FILE)
    meta = {"algorithm": "k-means on mean CIE-Lab of SLIC superpixels", "colour_clusters": clusters,
            "position_weight": float(settings["position_weight"]), "max_id": clusters}
    if os.path.isfile(meta_path) and not overwrite:
        with open(meta_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if {key: previous.get(key) for key in meta} != meta:
            raise DataError(f"{folder} holds colour regions made with other settings ({previous}); "
                            "give another [superpixels] regions_folder or rerun with --overwrite.")

    def work(index, paths):
        ids = superpixels.load(dataset.names[index]) - 1
        regions = colour_regions(dataset.load_image(index), ids, clusters=clusters,
                                 position_weight=float(settings["position_weight"]), seed=index)
        write_ids_png(paths[0], regions)

    written = run_per_image(dataset.names, lambda name: [os.path.join(folder, f"{name}.png")], work, overwrite, progress)
    with open(meta_path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2)
    echo(f"[regions] {written} computed ({clusters} colour clusters), {len(dataset) - written} already in {folder}")
    return written


def _uses_regions(recipe):
    return section(recipe, "ssr").get("mask_mode", "superpixel") != "box"


def region_cache(recipe, out_dir):
    """The colour-region cache SSR reads, or None when its mask does not use regions."""
    from wsss_keras.ops.superpixels import SuperpixelCache

    return SuperpixelCache(region_folder(recipe, out_dir)) if _uses_regions(recipe) else None


def region_bound(recipe, out_dir):
    """The static region-id bound for SSR's constructor (None without regions)."""
    cache = region_cache(recipe, out_dir)
    return cache.num_segments if cache is not None else None


def region_maps(recipe, out_dir, dataset, model):
    """The loader's `item_maps` for SSR: `{"regions": shifted ids (H, W)}` per image."""
    cache = region_cache(recipe, out_dir)
    if cache is None:
        return None
    return lambda index: {"regions": cache.load(dataset.names[index])}


def load_dino(recipe, echo=print):
    """The frozen DINO of `[dino] weights` (arch `dino_vits16` by default), or None."""
    settings = section(recipe, "dino")
    path = settings.get("weights")
    if not path:
        echo("[train] no [dino] weights: the affinity is CLIP's attention alone")
        return None
    if not os.path.isfile(path):
        raise recipe_error(recipe, f"[dino] weights = {path!r}: no such file (DINO's dino_deitsmall16_pretrain.pth).")
    from wsss_keras.backbones.vit.vit_weights import load_pretrained

    echo(f"[train] DINO attention from {path}")
    # A ViT arch name (dino_vits16) or a table of ViTEncoder arguments.
    return load_pretrained(path, settings.get("arch", "dino_vits16"))


def prototype_refresh(recipe, model, loader, echo=print):
    """A callback that rebuilds CMPA's image prototypes every `prototype_refresh` steps (and,
    for the "epoch" bank, at the start of training), and reports the bank's size."""
    import keras

    from wsss_keras.methods.ssr import (
        refresh_prototypes,
        refresh_prototypes_from_memory,
    )
    from wsss_keras.ops.prototypes import PrototypeBank

    every = int(model.options["prototype_refresh"])
    if every < 1:
        raise recipe_error(recipe, f"[ssr] prototype_refresh = {every}; give a positive number of steps.")
    recent = model.options["prototype_bank"] == "recent"

    class PrototypeRefresh(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start_step = 0  # set by fit_steps: the step training (re)starts at
            self.steps = 0

        def refresh(self):
            # On JAX, fit keeps the variables in its own state between steps: write them back
            # first, so the pass reads the current weights and the next step the new prototypes.
            sync = getattr(model, "jax_state_sync", None)
            if sync is not None:
                sync()
            if recent:
                bank = PrototypeBank(model.num_classes, int(model.options["prototype_bank_size"]))
                if refresh_prototypes_from_memory(model, bank) is None:
                    echo(f"[train] CMPA image prototypes not refreshed at step {self.steps}: no features remembered yet")
                    return
                echo(f"[train] CMPA image prototypes refreshed at step {self.steps} from {len(bank)} features "
                     f"of the last {every} steps")
                return
            bank = PrototypeBank(model.num_classes, per_class=None)
            epoch = self.steps // len(loader)  # the crops training reads at this step
            seen = [0]

            def batches():  # streamed: the whole training set does not fit in memory at once
                for index in range(len(loader)):
                    # A SegmentationLoader gives that epoch's batch; any other PyDataset its own.
                    images, targets = loader.batch_at(epoch, index) if hasattr(loader, "batch_at") else loader[index]
                    seen[0] += len(images)
                    yield images, targets["labels"]

            refresh_prototypes(model, bank, batches())
            echo(f"[train] CMPA image prototypes refreshed at step {self.steps} from {len(bank)} features ({seen[0]} images)")

        def on_train_begin(self, logs=None):
            self.steps = self.start_step
            # A resumed run restored the prototypes of its last refresh with the weights; the
            # recent bank has nothing to cluster before the first steps.
            if not recent and not float(keras.ops.convert_to_numpy(model.prototypes_ready)):
                self.refresh()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if self.steps % every == 0:
                self.refresh()

    return PrototypeRefresh()
