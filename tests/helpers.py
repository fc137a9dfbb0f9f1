"""Small datasets written in the real formats, for the tests."""

import os

import numpy as np

from wsss_keras.data.synthetic import generate


def tiny_synthetic(folder, n_train=6, n_val=4, size=64, seed=0, classes="6"):
    """A small synthetic VOC-layout dataset; returns its folder."""
    generate(str(folder), classes=classes, size=size, n_train=n_train, n_val=n_val, seed=seed, overwrite=True)
    return str(folder)


def split_path(root, split):
    return os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")


def write_split(root, split, names):
    with open(split_path(root, split), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))


def random_label_map(rng, shape, num_classes):
    return rng.integers(0, num_classes, size=shape).astype(np.uint8)


def tiny_irn_stages(init_from):
    """The recipe tables of the IRN pipeline's later stages (CAMs, IR labels, IRNet, walk,
    DeepLab-v2) for 32-pixel images, IRNet and DeepLab starting from the run's `init_from`."""
    return f"""
[cams]
scales = [1.0, 0.5]

[ir_labels]
crf = false

[irn]
init_backbone = "{init_from}"
backbone = {{ block_counts = [1, 1, 1, 1], base_width = 8, output_stride = 8 }}
radius = 3
batch_size = 2
crop_size = 32

[pseudo_labels]
mode = "random_walk"
radius = 2
exp_times = 3

[segmentation]
arch = "resnet50"
backbone = {{ block_counts = [1, 1, 1, 1], base_width = 8 }}
init_backbone = "{init_from}"
msc_scales = []
batch_size = 2
crop_size = 32
"""
