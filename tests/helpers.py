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


TINY_AMR = """
[recipe]
name = "tiny_amr"
method = "amr"

[model]
backbone = { block_counts = [1, 1, 1, 1], base_width = 8, output_stride = 8, freeze_stem = false }

[cam_network]
backbone = { frozen_batchnorm = "none" }
batch_size = 2
crop_size = 32
long_side = [28, 40]
cutout_count = 1
cutout_size = 8

[amr]
init_compensation = "cam_network"
amm_reduction = 4

[train]
batch_size = 2
crop_size = 32
long_side = [28, 40]

"""


def tiny_amr_recipe(folder):
    """The whole AMR pipeline (CAM network, AMR, IRN stages, DeepLab) for 32-pixel images,
    written to `folder/tiny_amr.toml` and loaded."""
    from wsss_keras.recipes import load_recipe

    path = os.path.join(folder, "tiny_amr.toml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(TINY_AMR + tiny_irn_stages("cam_network"))
    return load_recipe(path)



# Tiny stateful methods for the resume and data-parallel tests (tests/backend/test_training_resume.py,
# tests/test_distribute.py): each has state a stateless toy lacks. Keras is imported inside, so
# importing this module never fixes the backend.
TINY_CLASSES = 3  # tiny_synthetic(..., classes="3")


def tiny_toco_for_training(stem=True):
    """A compiled tiny ToCo (32-pixel crops) with state beyond its weights: CTC's random local
    crops (a SeedGenerator), the EMA teacher head, and the step counter that switches PTC on at
    step 2 and the seg loss at step 4 (both counted from 0)."""
    import keras

    from wsss_keras.backbones.conv_stem import ConvStem
    from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
    from wsss_keras.methods.toco import ToCo
    from wsss_keras.training.optimizers import GroupedAdamW
    from wsss_keras.training.schedules import PolyWarmup

    keras.utils.set_random_seed(0)
    encoder = ViTEncoder(patch_size=4 if stem else 8, hidden_dim=16, num_layers=2, num_heads=2, mlp_dim=32,
                         pos_embed_grid=4, image_channels=16 if stem else 3)
    losses = dict(cam_scales=[1.0], cam_flip=False, local_crops=2, local_crop_size=16, ptc_start=2, seg_start=4,
                  reg_weight=0.0, ctc_start=0, par_iterations=2, ema_momentum=0.5)
    model = ToCo(encoder, TINY_CLASSES, stem=ConvStem((8, 16), convs_per_stage=1) if stem else None, aux_layer=-2,
                 decoder_channels=8, decoder_dilation=2, projection=(16, 8, 16), losses=losses, max_steps=6, seed=0)
    # A schedule over the optimiser's step count (it must resume too), ToCo's 10x decoder group.
    model.compile(optimizer=GroupedAdamW(PolyWarmup(2e-3, 2, 6), lr_multipliers={"decoder/": 10.0}))
    return model


def toco_training_loader(data, batch_size=2):
    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import ToCoTrainTransform

    return SegmentationLoader(open_dataset(data, "train"), batch_size, ToCoTrainTransform(crop_size=32, scale_range=(0.8, 1.2)),
                              shuffle=True, seed=0, drop_remainder=True)


def tiny_ssr_for_training(prototype_bank="recent", prototype_refresh=2):
    """A compiled tiny SSR (16-pixel crops): the CMPA image prototypes are refreshed every
    `prototype_refresh` steps by `pipelines.ssr.prototype_refresh` from `prototype_bank` ("epoch":
    a pass over the training set; "recent": the rings of loss features the model keeps); its
    step clock ends the CLIP-space warm-up after 2 steps; the decoder's spatial dropout draws
    from a SeedGenerator; the ISA/TSA heads hold BatchNorm statistics."""
    import keras
    import numpy as np

    from wsss_keras.backbones.clip.clip_model import CLIPImageEncoder
    from wsss_keras.methods.ssr import SSR

    def unit_rows(seed, rows, width=8):
        values = np.random.default_rng(seed).normal(size=(rows, width))
        return (values / np.linalg.norm(values, axis=1, keepdims=True)).astype("float32")

    keras.utils.set_random_seed(0)
    encoder = CLIPImageEncoder(patch_size=4, hidden_dim=16, num_layers=3, num_heads=2, mlp_dim=32, output_dim=8,
                               pos_embed_grid=4)
    options = {"logit_scale": 5.0, "projection_hidden": 8, "projection_dim": 4, "prototype_refresh": prototype_refresh,
               "prototype_bank": prototype_bank, "prototype_bank_size": 8, "kmeans_iterations": 3, "cmpa_warmup_steps": 2,
               "mask_mode": "box"}
    model = SSR(encoder, TINY_CLASSES, unit_rows(0, TINY_CLASSES), unit_rows(1, 2), options=options,
                decoder_width=16, decoder_layers=1, decoder_heads=2)
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    return model


def tiny_amr_for_training(cps_mode="per_image", model_class=None):
    """A compiled tiny AMR (ResNet branches, 32-pixel crops): its AMMs gate on statistics of the
    whole batch (the Gaussian's mean and std, the spatial gate's normalisation); SGD with
    momentum and the reference's 10x groups. `model_class`: an `AMR` subclass to build instead."""
    import keras

    from wsss_keras.backbones.resnet import build
    from wsss_keras.methods.amr import AMR, CamNetwork
    from wsss_keras.training.optimizers import GroupedSGD

    keras.utils.set_random_seed(0)
    tiny = {"block_counts": (1, 1, 1, 1), "base_width": 8, "output_stride": 8}
    spotlight = CamNetwork(build("resnet50", name="cam_backbone", frozen_batchnorm="none", **tiny), TINY_CLASSES)
    backbone = build("resnet50", name="compensation_backbone", frozen_batchnorm="statistics", **tiny)
    model = (model_class or AMR)(spotlight, backbone, TINY_CLASSES, amm_reduction=4, cps_mode=cps_mode)
    model.compile(optimizer=GroupedSGD(0.05, lr_multipliers=model.lr_multipliers, momentum=0.9, weight_decay=1e-4))
    return model


def plain_training_loader(data, crop_size, batch_size=2):
    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import TrainTransform

    return SegmentationLoader(open_dataset(data, "train"), batch_size, TrainTransform(crop_size=crop_size, scale_range=(0.7, 1.3)),
                              shuffle=True, seed=0, drop_remainder=True)


def sigterm_during_step(step):
    """A Keras callback that sends this process a real SIGTERM as (1-based) step `step` of a fit
    begins (under accumulation: optimiser step `step`, before its second micro-batch), so
    `fit_steps` checkpoints at that step's end and stops. Keras is imported here, so importing
    this module never fixes the backend."""
    import signal

    import keras

    class SigtermDuringStep(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch + 1 == step:
                os.kill(os.getpid(), signal.SIGTERM)

    return SigtermDuringStep()
