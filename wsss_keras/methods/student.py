"""A compact student segmenter for the edge: a keras-hub network inside a `WSSSModel`.

The student is trained on a finished run's pseudo-labels (`wsss train-student`, in
`wsss_keras.pipelines.student`), optionally distilled from the run's final network's logits,
and saves as one `.keras` file that `wsss predict`, `evaluate`, `report`, `export` and `serve`
take like any other method's model.

Architectures (`ARCHS`) are keras-hub classes built from config (no preset download):

- `segformer_b0`: `keras_hub.models.SegFormerImageSegmenter` on a `SegFormerBackbone` over the
  `MiTBackbone` B0 configuration (3.7 M parameters at 150 classes; ~3.7 M here too). keras-hub's
  MiT attention takes its token grid as sqrt(tokens) x sqrt(tokens), so the input is square.
- `mobilenet_v3_small`: `keras_hub.models.MobileNetBackbone` (the V3-Small configuration),
  its stride-16 features, and a two-conv head (1x1 conv-BN-ReLU, 1x1 classifier). keras-hub's
  `DeepLabV3Backbone` is not used: it reads `image_encoder.pyramid_outputs`, which
  `MobileNetBackbone` (keras-hub 0.32) does not have, and its ASPP layer is not registered for
  serialisation, so it could not be saved inside this model.

Every student runs at a fixed square `input_size` (SegFormer's resizing layers and MiT's token
grid are static): `call` resizes other sizes to it, and the pipelines upsample the logits back.
"""

import keras
from keras import ops

from wsss_keras.methods.base import WSSSModel
from wsss_keras.methods.segmenter import segmentation_cross_entropy
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.ops.losses import IGNORE_INDEX

_PACKAGE = "wsss_keras"

# MiT-B0 as keras-hub's `mit_b0_*` presets configure it (SegFormer paper, table 6).
MIT_B0 = {
    "layerwise_depths": [2, 2, 2, 2], "num_layers": 4, "layerwise_num_heads": [1, 2, 5, 8],
    "layerwise_sr_ratios": [8, 4, 2, 1], "max_drop_path_rate": 0.1, "layerwise_patch_sizes": [7, 3, 3, 3],
    "layerwise_strides": [4, 2, 2, 2], "hidden_dims": [32, 64, 160, 256],
}
SEGFORMER_B0_PROJECTION = 256
# MobileNetV3-Small (Howard et al. 2019, table 2) in keras-hub's MobileNetBackbone terms:
# the first (depthwise) block, then four stacks of inverted residual blocks.
MOBILENET_V3_SMALL = {
    "stackwise_expansion": [[72, 88], [96, 240, 240], [120, 144], [288, 576, 576]],
    "stackwise_num_blocks": [2, 3, 2, 3],
    "stackwise_num_filters": [[24, 24], [40, 40, 40], [48, 48], [96, 96, 96]],
    "stackwise_kernel_size": [[3, 3], [5, 5, 5], [5, 5], [5, 5, 5]],
    "stackwise_num_strides": [[2, 1], [2, 1, 1], [1, 1], [2, 1, 1]],
    "stackwise_se_ratio": [[None, None], [0.25, 0.25, 0.25], [0.25, 0.25], [0.25, 0.25, 0.25]],
    "stackwise_activation": [["relu", "relu"], ["hard_swish"] * 3, ["hard_swish"] * 2, ["hard_swish"] * 3],
    "stackwise_padding": [[1, 1], [2, 2, 2], [2, 2], [2, 2, 2]],
    "output_num_filters": 576, "depthwise_filters": 16, "depthwise_stride": 2, "depthwise_residual": False,
    "last_layer_filter": 288, "squeeze_and_excite": 0.5, "input_activation": "hard_swish",
    "output_activation": "hard_swish", "input_num_filters": 16,
}
ARCHS = ("segformer_b0", "mobilenet_v3_small")
# The keras-hub backbone class each arch's ImageNet preset must hold (`--student-weights`).
PRESET_BACKBONES = {"segformer_b0": "MiTBackbone", "mobilenet_v3_small": "MobileNetBackbone"}


def _check_arch(arch):
    if arch not in ARCHS:
        raise ValueError(f"unknown student arch {arch!r}; choose one of {', '.join(ARCHS)}.")


def build_encoder(arch, input_size, overrides=None, preset=None):
    """The keras-hub image encoder of `arch` for square `input_size` images.

    Args:
        arch: one of `ARCHS`.
        input_size: the side of the square input.
        overrides: backbone config entries over the arch's (tiny networks for tests).
        preset: a local keras-hub preset folder of the arch's backbone class (`PRESET_BACKBONES`)
            holding ImageNet weights; loaded with `from_preset` at `input_size`.
    """
    import keras_hub

    _check_arch(arch)
    image_shape = (int(input_size), int(input_size), 3)
    cls = getattr(keras_hub.models, PRESET_BACKBONES[arch])
    if preset is not None:
        return cls.from_preset(preset, image_shape=image_shape)
    base = MIT_B0 if arch == "segformer_b0" else MOBILENET_V3_SMALL
    return cls(**{**base, **dict(overrides or {})}, image_shape=image_shape)


def build_network(arch, num_classes, input_size, overrides=None, preset=None, projection_filters=None, head_channels=128):
    """The keras-hub segmentation network of `arch`: (B, S, S, 3) -> logits.

    SegFormer returns logits at the input size (its segmenter resizes them there); the
    MobileNet student returns them at stride 16.

    Example:
    ```python
    network = build_network("segformer_b0", 21, 512)
    network(np.zeros((1, 512, 512, 3), "float32")).shape  # (1, 512, 512, 21)
    ```
    """
    import keras_hub

    encoder = build_encoder(arch, input_size, overrides, preset)
    if arch == "segformer_b0":
        backbone = keras_hub.models.SegFormerBackbone(
            image_encoder=encoder, projection_filters=int(projection_filters or SEGFORMER_B0_PROJECTION))
        return keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=int(num_classes))
    features = _stride16_features(encoder, int(input_size))
    x = keras.layers.Conv2D(int(head_channels), 1, use_bias=False, name="head_conv")(features)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.ReLU(name="head_relu")(x)
    logits = keras.layers.Conv2D(int(num_classes), 1, name="classifier")(x)
    return keras.Model(encoder.inputs, logits, name="mobilenet_segmenter")


def _stride16_features(encoder, input_size):
    """The last output of `encoder` (a functional keras-hub backbone) at 1/16 of the input
    (the backbone's own end is at 1/32: too coarse for segmentation)."""
    target = -(-input_size // 16)
    chosen = None
    for layer in encoder.layers:
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] == target:
            chosen = layer.output
    return chosen if chosen is not None else encoder.output


def _static_attention_call(self, x):
    """keras-hub's `SegFormerMultiheadAttention.call` with every reshape written as
    (-1, static sizes...): the same arithmetic, but no target shape built from the dynamic batch
    size. With keras-hub's `[B, N, C]` shape tensors, tf2onnx's optimiser folds the head
    transposes of one-head stages (MiT-B0's first) into a Reshape whose target takes the batch
    from the wrong axis; onnxruntime then fails at run time ({49,1,3136,32} -> {1,3136,32}).
    The token count and width are static because the student's input size is."""
    _, tokens, channels = x.shape
    heads, width = self.num_heads, channels // self.num_heads
    side = round(tokens ** 0.5)
    q = ops.transpose(ops.reshape(self.q(x), (-1, tokens, heads, width)), (0, 2, 1, 3))
    if self.sr_ratio > 1:
        x = self.sr(ops.reshape(x, (-1, side, side, channels)))
        x = self.norm(ops.reshape(x, (-1, x.shape[1] * x.shape[2], channels)))
    kv_tokens = x.shape[1]
    k = ops.transpose(ops.reshape(self.k(x), (-1, kv_tokens, heads, width)), (0, 2, 1, 3))
    v = ops.transpose(ops.reshape(self.v(x), (-1, kv_tokens, heads, width)), (0, 2, 1, 3))
    attn = ops.nn.softmax((q @ ops.transpose(k, (0, 1, 3, 2))) * self.scale, axis=-1)
    attn = self.dropout(attn) @ v
    attn = ops.reshape(ops.transpose(attn, (0, 2, 1, 3)), (-1, tokens, channels))
    return self.proj_drop(self.proj(attn))


def _static_attention(network):
    """Give every MiT attention layer of `network` `_static_attention_call` (same weights and
    results); called on every construction, so a loaded student has it too."""
    from keras_hub.src.models.mit.mit_layers import SegFormerMultiheadAttention

    count = 0
    for layer in network._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SegFormerMultiheadAttention):
            layer.call = _static_attention_call.__get__(layer)
            count += 1
    return count


def _depthwise_call(self, inputs):
    """A depthwise `Conv2D` (groups == input channels, as keras-hub's MobileNet builds them) as
    `ops.depthwise_conv`: the same result, but on TensorFlow Keras runs a grouped conv inside
    an XLA-compiled `tf.function` (its CPU kernel is broken), which tf2onnx cannot convert (the
    ONNX file keeps a `StatefulPartitionedCall` and does not load). The (kh, kw, 1, C * m)
    kernel is the (kh, kw, C, m) depthwise kernel: output channel c * m + j in both."""
    kernel = self.kernel
    height, width, _, outputs = kernel.shape
    kernel = ops.reshape(kernel, (height, width, self.groups, outputs // self.groups))
    x = ops.depthwise_conv(inputs, kernel, strides=self.strides, padding=self.padding,
                           dilation_rate=self.dilation_rate, data_format=self.data_format)
    if self.use_bias:
        x = x + self.bias
    return self.activation(x) if self.activation is not None else x


def _plain_depthwise(network):
    """Give every depthwise `Conv2D` of `network` `_depthwise_call` (channels-last only)."""
    count = 0
    for layer in network._flatten_layers(include_self=False, recursive=True):
        if (type(layer) is keras.layers.Conv2D and layer.groups > 1 and layer.data_format == "channels_last"
                and layer.kernel.shape[2] == 1):
            layer.call = _depthwise_call.__get__(layer)
            count += 1
    return count


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StudentSegmenter(WSSSModel):
    """A keras-hub segmentation network trained as a student on a run's pseudo-labels.

    `call(images)` returns logits `(B, h, w, num_classes)` (background first) for images
    normalised with `image_mean` / `image_std`; images of another size than `input_size` are
    bilinearly resized to it first. Training targets are a dict with `"label_maps"` ((B, H, W)
    ints, 255 = ignore), as the segmentation loader gives them; the loss is the cross-entropy
    over labelled pixels with the logits bilinearly upsampled to the labels, plus, with a
    teacher attached (`set_teacher`), `kd_weight` times the temperature-softened KL divergence
    to the teacher's logits (Hinton et al. 2015, scaled by T^2), over every pixel.

    Args:
        network: the keras-hub network (`build_network`) or its serialised config.
        num_classes: classes including background.
        input_size: the side of the square input the network runs at.
        arch: the arch name (one of `ARCHS`), kept for messages and reports.
        kd_weight, kd_temperature: the distillation term's weight and temperature.
        ignore_index: label value left out of the loss (255).
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe`.

    Example:
    ```python
    network = build_network("segformer_b0", 4, 64, overrides={"hidden_dims": [8, 8, 8, 8]})
    student = StudentSegmenter(network, 4, 64, arch="segformer_b0", class_names=names)
    student.segment_logits(np.zeros((2, 64, 64, 3), "float32")).shape  # (2, 64, 64, 4)
    ```
    """

    def __init__(self, network, num_classes, input_size, arch="segformer_b0", kd_weight=0.0, kd_temperature=1.0,
                 ignore_index=IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        if isinstance(network, dict):
            network = keras.saving.deserialize_keras_object(network)
        self.network = network
        # Both only rewrite ops (same weights, same results) so that tf2onnx converts the graph.
        _static_attention(network)
        _plain_depthwise(network)
        self.num_classes = int(num_classes)
        self.input_size = int(input_size)
        self.arch = str(arch)
        self.kd_weight = float(kd_weight)
        self.kd_temperature = float(kd_temperature)
        self.ignore_index = int(ignore_index)
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"num_classes={num_classes} counts background, but class_names has "
                             f"{len(self.class_names)} names.")
        # The teacher is set with object.__setattr__ so Keras does not track it: it must not be
        # trained, nor saved inside the student's file.
        object.__setattr__(self, "_teacher", None)

    def build(self, input_shape=None):
        self.built = True

    def build_from_config(self, config):
        self.built = True

    def set_teacher(self, teacher):
        """Attach a trained `WSSSModel` whose `segment_logits` the KD term follows (None: off)."""
        object.__setattr__(self, "_teacher", teacher)

    def call(self, images, training=None):
        images = ops.convert_to_tensor(images, self.compute_dtype)
        size = (self.input_size, self.input_size)
        if tuple(images.shape[1:3]) != size:
            images = resize_bilinear(images, size)
        return self.network(images, training=training)

    def segment_logits(self, images):
        """Logits (B, h, w, num_classes) of normalised images; the pipeline upsamples them."""
        return self(images, training=False)

    def _teacher_logits(self, images):
        """The teacher's logits on the student's batch, renormalised to the teacher's mean/std."""
        teacher = self._teacher
        images = ops.convert_to_tensor(images, "float32")
        if (tuple(teacher.image_mean), tuple(teacher.image_std)) != (self.image_mean, self.image_std):
            rgb = images * ops.convert_to_tensor(self.image_std) + ops.convert_to_tensor(self.image_mean)
            images = (rgb - ops.convert_to_tensor(teacher.image_mean)) / ops.convert_to_tensor(teacher.image_std)
        return ops.stop_gradient(ops.cast(teacher.segment_logits(images), "float32"))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        label_maps = y.get("label_maps") if isinstance(y, dict) else y
        if label_maps is None:
            raise ValueError("StudentSegmenter trains on (images, {'label_maps': (B, H, W) ints}); ask the loader "
                             "for label maps (with_label_maps=True).")
        if y_pred is None:
            y_pred = self(x, training=training)
        label_size = tuple(label_maps.shape[1:3])
        logits = ops.cast(y_pred, "float32")
        if tuple(logits.shape[1:3]) != label_size:
            logits = resize_bilinear(logits, label_size)
        loss = segmentation_cross_entropy(logits, label_maps, self.ignore_index)
        if self._teacher is not None and self.kd_weight > 0.0:
            teacher = self._teacher_logits(x)
            if tuple(teacher.shape[1:3]) != label_size:
                teacher = resize_bilinear(teacher, label_size)
            t = self.kd_temperature
            target = ops.softmax(teacher / t, axis=-1)
            log_student = ops.log_softmax(logits / t, axis=-1)
            kl = ops.sum(target * (ops.log(ops.maximum(target, 1e-8)) - log_student), axis=-1)
            loss = loss + self.kd_weight * t * t * ops.mean(kl)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "num_classes": self.num_classes, "input_size": self.input_size, "arch": self.arch,
            "kd_weight": self.kd_weight, "kd_temperature": self.kd_temperature, "ignore_index": self.ignore_index,
        }
