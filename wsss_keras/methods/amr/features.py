"""The encoders AMR's networks run on: a ResNet's last stage or a ViT's patch tokens, and the
ViT's AMM hook."""

import keras
from keras import ops


def as_backbone(backbone):
    """A wsss_keras ResNet or ViT encoder (deserialised from its config when given one)."""
    if isinstance(backbone, dict):
        backbone = keras.saving.deserialize_keras_object(backbone)
    if not (hasattr(backbone, "stages") or hasattr(backbone, "patch_grid")):
        raise ValueError(
            f"expected a wsss_keras ResNet or ViTEncoder backbone, got {type(backbone).__name__}."
        )
    return backbone


def is_vit(backbone):
    return hasattr(backbone, "patch_grid")


def feature_channels(backbone):
    return backbone.hidden_dim if is_vit(backbone) else backbone.num_features


def dense_features(backbone, images, training=None, hooks=None):
    """(B, h, w, C) features: a ResNet's last stage, or a ViT's patch tokens on their grid.

    `hooks` are `BottleneckHooks` for a ResNet, an attention hook for a ViT.
    """
    if not is_vit(backbone):
        return backbone(images, training=training, hooks=hooks)
    tokens = backbone(images, hook=hooks)["patch_tokens"]
    height, width = backbone.patch_grid(images)
    return ops.reshape(tokens, (-1, height, width, tokens.shape[-1]))


class TokenGridAMM:
    """An attention hook that gates each block's attention branch with that block's AMM on the
    patch grid (the ViT analogue of AMR's residual-branch AMMs); class tokens pass ungated.
    `paired`: the AMMs' statistics per image and mirror (`AMM`)."""

    def __init__(self, amms, num_class_tokens, grid, paired=False):
        self.amms, self.num_class_tokens, self.grid, self.paired = amms, num_class_tokens, grid, paired

    def attention_output(self, output, block_index, tokens):
        height, width = self.grid
        classes, patches = output[:, : self.num_class_tokens], output[:, self.num_class_tokens :]
        gated = self.amms[block_index](ops.reshape(patches, (-1, height, width, patches.shape[-1])), paired=self.paired)
        patches = ops.reshape(ops.cast(gated, patches.dtype), (-1, height * width, patches.shape[-1]))
        return ops.concatenate([classes, patches], axis=1)
