"""A plain CNN CAM network: the CPU-sized baseline every method is compared with.

Conv blocks (3x3 conv, BatchNorm, ReLU), max-pooling to output stride 8, a 1x1 classifier
without bias, global average pooling for the image logits, multi-label soft-margin loss; the CAM
of class c is the classifier's response map (Zhou et al., 2016). On the synthetic data this is
the "plain CAM" that shows the co-occurrence and under-activation failures, and the bar the
CPU recipes of the ViT and CLIP methods must reach.
"""

import keras
from keras import ops

from wsss_keras.ops.losses import multilabel_soft_margin_loss


@keras.saving.register_keras_serializable(package="wsss_keras")
class CamBaseline(keras.Model):
    """A small fully convolutional multi-label classifier whose classifier maps are CAMs.

    Args:
        num_classes: foreground classes.
        widths: channels of the conv stages; every stage but the last ends in a 2x2 max-pool.
        convs_per_stage: conv layers per stage.

    Example:
    >>> import numpy as np
    >>> model = CamBaseline(num_classes=6, widths=(8, 16))
    >>> model(np.zeros((2, 32, 32, 3), "float32")).shape
    (2, 6)
    """

    def __init__(self, num_classes, widths=(16, 32, 64, 128), convs_per_stage=2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.convs_per_stage = convs_per_stage
        layers = []
        for stage, width in enumerate(self.widths):
            for _ in range(convs_per_stage):
                layers += [
                    keras.layers.Conv2D(width, 3, padding="same", use_bias=False),
                    keras.layers.BatchNormalization(),
                    keras.layers.ReLU(),
                ]
            if stage < len(self.widths) - 1:
                layers.append(keras.layers.MaxPooling2D(2))
        self.features = keras.Sequential(layers, name="features")
        self.classifier = keras.layers.Conv2D(num_classes, 1, use_bias=False, name="classifier")

    def call(self, images, training=None):
        maps = self.classifier(self.features(images, training=training))
        return ops.mean(maps, axis=(1, 2))

    def cam_maps(self, images):
        """Raw class maps (B, h, w, C) at output stride 2^(stages-1), before ReLU."""
        return self.classifier(self.features(images, training=False))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = y["labels"] if isinstance(y, dict) else y
        return multilabel_soft_margin_loss(labels, y_pred)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "widths": self.widths, "convs_per_stage": self.convs_per_stage})
        return config

