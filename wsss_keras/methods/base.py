"""What every trained WSSS model offers the pipelines, whatever its method.

A method is a `keras.Model` subclass that also inherits `WSSSModel`. The pipelines
(`wsss cams`, `pseudo-labels`, `predict`, `evaluate`) only use this interface, so they work for
every method:

- `class_names`: the class names, background first (saved in the `.keras` file).
- `image_mean`, `image_std`: the normalisation the model expects on RGB in [0, 1].
- `recipe`: the recipe dict the model was trained from (saved with it; may be empty).
- `cam_maps(images)`: raw class activation maps `(B, h, w, C)` over the C foreground classes
  at the model's output stride, before ReLU and normalisation.
- `segment_logits(images)`: segmentation logits `(B, h, w, C + 1)` (background first), or
  raise `NotImplementedError` when the method has no segmentation head of its own.

Images are `(B, H, W, 3)` float32, normalised with `image_mean` / `image_std`.
"""

from wsss_keras.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class WSSSModel:
    """Mixin holding the metadata every method saves with its weights.

    Call `_init_wsss(class_names, image_mean, image_std, recipe)` from `__init__` and merge
    `_wsss_config()` into `get_config()`.
    """

    def _init_wsss(self, class_names=None, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, recipe=None):
        self.class_names = list(class_names) if class_names is not None else None
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.recipe = dict(recipe or {})

    def _wsss_config(self):
        return {
            "class_names": self.class_names,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "recipe": self.recipe,
        }

    def cam_maps(self, images):
        raise NotImplementedError(f"{type(self).__name__} does not produce CAMs.")

    def segment_logits(self, images):
        raise NotImplementedError(
            f"{type(self).__name__} has no segmentation head; train a segmentation network on its pseudo-labels."
        )
