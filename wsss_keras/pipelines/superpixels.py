"""The `superpixels` stage, shared by SSC and SSR: each training image's SLIC superpixels, and
for SSR their colour regions.

- `make_superpixels` (`wsss run` stage `superpixels`, or `wsss superpixels`): SLIC superpixels of
  the `[train]` split, cached in `[superpixels] folder` (default `<run>/superpixels`); a folder
  of SSC's released `voc_superpixels` can be named there instead. SSC's self-modulation reads
  them.
- `make_regions` (same stage, after SLIC, for SSR): SGC's colour regions, the SLIC superpixels
  of each training image grouped by K-means on their mean CIE-Lab colour (spec methods/ssr.md
  §2.6.3, [UNSPEC] k = 8), cached as `regions/<id>.png` in the superpixels' encoding. Computed
  once at the image's size and carried through the training crops by the loader (spec §2.1
  step 8, option b), with 0 for the crop's padding, which is never a target.
"""

import json
import os

from wsss_keras.errors import DataError
from wsss_keras.recipes import recipe_error, section

SUPERPIXEL_DIR = "superpixels"
REGION_DIR = "regions"
REGION_DEFAULTS = {"colour_clusters": 8, "position_weight": 0.0}


def superpixel_folder(recipe, out_dir):
    """Where the run's superpixels are: `[superpixels] folder`, else `<out_dir>/superpixels`."""
    return section(recipe, "superpixels").get("folder") or os.path.join(out_dir, SUPERPIXEL_DIR)


def make_superpixels(recipe, data_dir, out_dir, progress=None, overwrite=False, echo=print):
    """SLIC superpixels of the `[train]` split (`[superpixels]`: n_segments, compactness, sigma)."""
    from wsss_keras.data.layouts import open_split
    from wsss_keras.ops.superpixels import SLIC_DEFAULTS, compute_superpixels

    settings = section(recipe, "superpixels")
    dataset = open_split(data_dir, section(recipe, "train").get("split", "train"))
    folder = superpixel_folder(recipe, out_dir)
    written = compute_superpixels(
        dataset, folder, progress=progress, overwrite=overwrite,
        **{key: settings.get(key, default) for key, default in SLIC_DEFAULTS.items()},
    )
    echo(f"[superpixels] {written} computed, {len(dataset) - written} already in {folder} ({dataset.description})")
    return written


def region_folder(recipe, out_dir):
    """`[superpixels] regions_folder`, else `<out_dir>/regions`."""
    return section(recipe, "superpixels").get("regions_folder") or os.path.join(out_dir, REGION_DIR)


def make_regions(recipe, data_dir, out_dir, progress=None, overwrite=False, echo=print):
    """Colour regions of the `[train]` split's superpixels; returns how many were written."""
    from wsss_keras.data.layouts import open_split
    from wsss_keras.ops.region_masks import colour_regions
    from wsss_keras.ops.superpixels import META_FILE, SuperpixelCache, write_ids_png
    from wsss_keras.pipelines.cams import run_per_image

    settings = {key: section(recipe, "superpixels").get(key, default) for key, default in REGION_DEFAULTS.items()}
    clusters = int(settings["colour_clusters"])
    if clusters < 1:
        raise recipe_error(recipe, f"[superpixels] colour_clusters = {clusters}; give at least 1 (SSR's spec suggests 8).")
    dataset = open_split(data_dir, section(recipe, "train").get("split", "train"))
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
