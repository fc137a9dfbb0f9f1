"""What every trained WSSS model offers the pipelines, whatever its method.

A method is a subclass of `WSSSModel` (itself a `keras.Model`). The pipelines (`wsss cams`,
`pseudo-labels`, `predict`, `evaluate`) only use this interface, so they work for every method:

- `class_names`: the class names, background first (saved in the `.keras` file).
- `image_mean`, `image_std`: the normalisation the model expects on RGB in [0, 1].
- `recipe`: the recipe dict the model was trained from (saved with it; may be empty).
- `cam_maps(images)`: raw class activation maps `(B, h, w, C)` over the C foreground classes
  at the model's output stride, before ReLU and normalisation.
- `segment_logits(images)`: segmentation logits `(B, h, w, C + 1)` (background first), or
  raise `NotImplementedError` when the method has no segmentation head of its own.

Images are `(B, H, W, 3)` float32, normalised with `image_mean` / `image_std`.
"""

import keras

from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class WSSSModel(keras.Model):
    """The base of every method's model: the metadata saved with its weights, and the
    pipelines' interface.

    It owns `class_names`, `image_mean`, `image_std` and `recipe`: a method's constructor takes
    its own arguments and passes the rest (these four, and Keras' `name`, `dtype`, ...) to
    `super().__init__(**kwargs)`; its `get_config` adds only its own entries to
    `super().get_config()`. `from_config` calls the constructor with the config, so a method
    whose constructor rebuilds nested layers from their configs needs no `from_config` of its
    own.

    Args:
        class_names: the class names, background first; None where unknown.
        image_mean: the per-channel mean the model's images are normalised with (RGB in [0, 1]).
        image_std: the per-channel standard deviation.
        recipe: the recipe dict the model was trained from (saved with it).
        **kwargs: `keras.Model` arguments (`name`, `dtype`, `trainable`).

    Example:
    ```python
    import keras
    from keras import ops
    from wsss_keras.methods.base import WSSSModel

    class OneConvCAM(WSSSModel):
        def __init__(self, num_classes, **kwargs):
            super().__init__(**kwargs)
            self.num_classes = num_classes
            self.conv = keras.layers.Conv2D(num_classes, 3, padding="same")

        def call(self, images):
            return ops.mean(self.conv(images), axis=(1, 2))

        def cam_maps(self, images):
            return self.conv(images)

        def get_config(self):
            return {**super().get_config(), "num_classes": self.num_classes}

    model = OneConvCAM(2, class_names=["background", "cat", "dog"])
    model(ops.zeros((1, 8, 8, 3)))
    assert type(model).from_config(model.get_config()).class_names == model.class_names
    ```
    """

    def __init__(self, class_names=None, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, recipe=None, **kwargs):
        super().__init__(**kwargs)
        self.class_names = list(class_names) if class_names is not None else None
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.recipe = dict(recipe or {})

    def get_config(self):
        return {
            **super().get_config(),
            "class_names": self.class_names,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "recipe": self.recipe,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def cam_maps(self, images):
        raise NotImplementedError(f"{type(self).__name__} does not produce CAMs.")

    def segment_logits(self, images):
        raise NotImplementedError(
            f"{type(self).__name__} has no segmentation head; train a segmentation network on its pseudo-labels."
        )
