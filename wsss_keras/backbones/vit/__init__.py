"""ViT-family backbones: ViT, DeiT, DINO (and CLIP's image tower) with hookable attention.

- `ViTEncoder`: the Keras model (`vit_encoder.py`).
- `ARCHS`: architecture name -> `ViTEncoder` kwargs; `load_pretrained(source, arch, **kwargs)`
  builds one and loads a local checkpoint, auto-detecting its format (`vit_weights.py`).

Keras is imported only when `ViTEncoder` is first used, so importing this package keeps the
backend choice open.
"""

from wsss_keras.backbones.vit.vit_weights import ARCHS, load_pretrained


def __getattr__(name):
    if name == "ViTEncoder":
        from wsss_keras.backbones.vit.vit_encoder import ViTEncoder

        return ViTEncoder
    raise AttributeError(name)


__all__ = ["ARCHS", "ViTEncoder", "load_pretrained"]
