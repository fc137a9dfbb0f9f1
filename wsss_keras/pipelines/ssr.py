"""SSR's data and training extras on top of the WeCLIP stages (`wsss_keras.pipelines.weclip`).

- `train_ssr` (stage `train`): WeCLIP's training stage with `SSRPlugin` plugged in: the model
  is SSR (with DINO and the region-id bound), the loader adds the colour regions, and the
  prototype refresh runs as a callback. The host never imports this module.
- `region_cache` / `region_maps`: the colour regions (made in the shared `superpixels` stage,
  `wsss_keras.pipelines.superpixels.make_regions`) as SSR reads them.
- SSR's DINO comes from `wsss_keras.pipelines.dino` (`load_dino`): DINO ViT-S/16's released
  file, or the small ViT the CPU recipe trains; without one, SGC's affinity is CLIP's alone.
- `prototype_refresh`: CMPA's image prototypes, rebuilt every `prototype_refresh` steps
  (`[ssr] prototype_bank`): "epoch", at the start too, from a no-grad pass over every training
  batch of the current epoch (the paper's whole training set); "recent", from the loss
  features the model remembered over the last `prototype_refresh` steps (the spec's cheaper
  memory, at most `prototype_bank_size` per class).
"""

from wsss_keras.pipelines.superpixels import region_folder
from wsss_keras.pipelines.weclip import WeCLIPPlugin, train_weclip
from wsss_keras.recipes import recipe_error, section


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


class SSRPlugin(WeCLIPPlugin):
    """SSR on the WeCLIP host: `[ssr]` options, DINO, colour regions, prototype refresh."""

    options_table = "ssr"

    def __init__(self, weights=None):
        self.weights = weights  # the run's --weights; RANDOM_WEIGHTS reaches load_dino

    def build(self, recipe, out_dir, encoder, num_classes, common, echo=print):
        from wsss_keras.methods.ssr import SSR
        from wsss_keras.pipelines.dino import load_dino

        dino = load_dino(recipe, echo, weights=self.weights, out_dir=out_dir)
        return SSR(encoder, num_classes, dino=dino, num_regions=region_bound(recipe, out_dir), **common)

    def item_maps(self, recipe, out_dir, dataset, model):
        return region_maps(recipe, out_dir, dataset, model)

    def callbacks(self, recipe, model, loader, echo=print):
        return [prototype_refresh(recipe, model, loader, echo)]


def train_ssr(recipe, data_dir, out_dir, weights=None, steps=None, echo=print):
    """Train SSR's decoder on the frozen CLIP (`train_weclip` with `SSRPlugin`); returns the
    path of `model.keras`."""
    return train_weclip(recipe, data_dir, out_dir, weights=weights, steps=steps, echo=echo, plugin=SSRPlugin(weights))
