"""DeepLab-v2 (ASPP, optional multi-scale "MSC" training): the segmentation network that the
multi-stage methods (AMR, SSC; stage I of the IRN pipeline) train on their pseudo-labels.

What follows kazuto1011/deeplab-pytorch's `configs/voc12.yaml` (spec methods/amr.md §4.7):
- ResNet-101 at output stride 8, the last two stages dilated 2 and 4 in every block
  (`ResNet(output_stride=8, dilation="uniform")`), all BatchNorm frozen (moving statistics used
  and kept, gamma/beta not trained: `frozen_batchnorm="all"`); the stem is trained.
- ASPP as DeepLab-v2 has it (`ASPPSum`): four parallel 3x3 convs straight to the classes,
  dilations 6, 12, 18, 24, with bias, weights N(0, 0.01), bias 0, outputs summed.
- MSC: logits of the input at scale 1 and at each of `msc_scales` (0.5, 0.75), and their
  pixel-wise max after the extra scales are bilinearly upsampled to the scale-1 logits. In
  training the loss is the sum of the cross-entropies (ignore 255, mean over labelled pixels)
  of all of them (four terms); at inference only the max-fused logits are returned.
- Loss resolution: the label map is **nearest-resized to each logit map's size** with PIL's
  NEAREST rule (source index floor((i + 0.5) · in / out), PIL's rounding included), as the
  reference's `resize_labels` does (`loss_resolution="logits"`, the default).
  `loss_resolution="labels"` instead upsamples each logit map bilinearly to the label size
  (what most later codebases do); it is an option, not the reference.
- Parameter groups (`lr_multipliers`, `weight_decay_multipliers`, for
  `wsss_keras.training.optimizers.GroupedSGD`): backbone convs 1x, ASPP weights 10x, ASPP
  biases 20x; SGD momentum 0.9, coupled weight decay 5e-4 on the first two groups and **none
  on the ASPP biases** (the reference's `main.py` gives that group weight_decay 0.0; spec §4.7
  says 5e-4 throughout); poly power 0.9; 20k iterations of batch 5 x iter_size 2
  (`gradient_accumulation_steps=2` in Keras averages the two gradients the same way).

What differs from it:
- The backbone is the package's torchvision-layout ResNet (stride on the 3x3 conv, ImageNet
  weights from torchvision's state dict through `wsss_keras.backbones.resnet.load_pretrained`),
  not the Caffe layout (stride on the first 1x1, ceil-mode max-pool). Logits are
  ceil(H/8) x ceil(W/8); where ceil(H/2) is even the Caffe stem's ceil-mode pool gives one
  more row/column: the 0.5 and 0.75 views of a 321 crop (160, 240 px) give 20 and 30 logit
  rows here, 21 and 31 there (scale 1: 41 in both).
- Input normalisation: the package's loader normalises torchvision-style (RGB in [0, 1], mean
  (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)), as the torchvision weights expect, not
  Caffe's BGR mean subtraction on 0..255 without std.
- The MSC image pyramid is resized to floor(s·H) x floor(s·W) with Keras's size-based bilinear
  (align_corners=False); the reference's current `interpolate(scale_factor=s)` maps
  coordinates with 1/s instead of in/out, a sub-pixel difference when s·H is not an integer
  (its earlier size-based version matches exactly).
- A crop with no labelled pixel gives a loss of 0 for that term (torch's mean gives NaN).
  Label values outside 0..num_classes − 1 are ignored like 255 (torch raises on them).
- `PolyWarmup(lr, 0, T)` recomputes the rate every step; the reference's `PolynomialLR`
  (LR_DECAY 10) every 10 iterations: lr_t = lr · (1 − 10·floor(t/10)/T)^0.9.

keras-hub's `DeepLabV3ImageSegmenter` is not used: its `DeepLabV3Backbone` wants a keras-hub
image encoder with `pyramid_outputs` (in practice a keras-hub preset) and builds the v3 / v3+
head (ASPP with image pooling and BatchNorm, optional decoder), not v2's summed ASPP. This
network reuses the package's torchvision-layout ResNet, its bottleneck hooks and its checkpoint
importer, and saves and exports like every other method.
"""

import keras
from keras import ops

from wsss_keras.methods.base import WSSSModel
from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.ops.losses import IGNORE_INDEX, pixel_cross_entropy

_PACKAGE = "wsss_keras"

ASPP_RATES = (6, 12, 18, 24)
MSC_SCALES = (0.5, 0.75)
LOSS_RESOLUTIONS = ("logits", "labels")
# deeplab-pytorch's parameter groups: "10x" ASPP weights, "20x" ASPP biases, backbone "1x".
ASPP_KERNEL_LR_MULTIPLIER = 10.0
ASPP_BIAS_LR_MULTIPLIER = 20.0
# The paper recipe's backbone settings (spec §4.7); `build_deeplab_v2` applies them.
DEEPLAB_V2_BACKBONE = {"output_stride": 8, "dilation": "uniform", "frozen_batchnorm": "all", "freeze_stem": False}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ASPPSum(keras.layers.Layer):
    """DeepLab-v2's ASPP: parallel dilated 3x3 convs straight to the classes, summed.

    Each branch is a 3x3 conv with dilation (and zero padding) `rate`, with bias, from the
    features to `num_classes` channels; the layer returns the sum of the branches. Kernels are
    drawn from N(0, `kernel_stddev`) and biases start at 0 (deeplab-pytorch's init).

    The weights are named `kernel_<rate>` and `bias_<rate>`, so every bias of the layer has a
    path containing `"<layer name>/bias"` and every kernel `"<layer name>/kernel"`: one
    substring per learning-rate group (see `DeepLabV2.lr_multipliers`).

    Args:
        num_classes: output channels (classes including background).
        rates: the branches' dilation rates, distinct positive ints; (6, 12, 18, 24).
        kernel_stddev: standard deviation of the kernels' normal init (0.01).
        **kwargs: `keras.layers.Layer` arguments (name, dtype).

    Example:
    ```python
    aspp = ASPPSum(21)
    logits = aspp(features)  # (B, h, w, 2048) -> (B, h, w, 21)
    ```
    """

    def __init__(self, num_classes, rates=ASPP_RATES, kernel_stddev=0.01, **kwargs):
        super().__init__(**kwargs)
        rates = tuple(int(rate) for rate in rates)
        if not rates or min(rates) < 1 or len(set(rates)) != len(rates):
            raise ValueError(f"rates must be distinct positive ints, got {rates!r}; DeepLab-v2 uses {ASPP_RATES}.")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.rates = rates
        self.kernel_stddev = float(kernel_stddev)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ASPPSum needs a known channel count; build it with (None, None, None, channels).")
        self.kernels, self.biases = [], []
        for rate in self.rates:
            # A new initializer per kernel: an unseeded Keras initializer fixes its seed when
            # created, so one instance reused would give the four branches the same weights.
            self.kernels.append(self.add_weight(
                shape=(3, 3, channels, self.num_classes), name=f"kernel_{rate}",
                initializer=keras.initializers.RandomNormal(0.0, self.kernel_stddev),
            ))
            self.biases.append(self.add_weight(shape=(self.num_classes,), name=f"bias_{rate}", initializer="zeros"))
        self.built = True

    def call(self, features):
        # Stride 1 and an odd kernel: "same" pads `rate` on every side, torch's padding=rate.
        outputs = [
            ops.conv(features, kernel, strides=1, padding="same", dilation_rate=rate)
            for kernel, rate in zip(self.kernels, self.rates)
        ]
        # Each bias is its own variable (each gets torch's per-parameter decay), added once.
        return sum(outputs[1:], outputs[0]) + sum(self.biases[1:], self.biases[0])

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, rates=list(self.rates), kernel_stddev=self.kernel_stddev)
        return config


def nearest_source_indices(source, target):
    """Source index of each of `target` output pixels under PIL's NEAREST resize.

    PIL (`ImagingScaleAffine`) walks x = step / 2, x += step with step = source / target in
    double precision and takes int(x): floor((i + 0.5) · source / target), except that the
    running sum can land just below an exact integer (12 -> 30: output 7 reads source 2, not
    3). The same loop here gives PIL's indices exactly.
    """
    step = source / target
    position, indices = step * 0.5, []
    for _ in range(target):
        indices.append(min(int(position), source - 1))
        position += step
    return indices


def _static_size(tensor, what):
    """(height, width) of an NHWC / NHW tensor as Python ints; the image pyramid and the label
    index tables are built from them, so sizes must be known when the graph is traced."""
    height, width = tensor.shape[1], tensor.shape[2]
    if not (isinstance(height, int) and isinstance(width, int)):
        raise ValueError(
            f"DeepLabV2 needs {what} of known height and width, got {(height, width)}; "
            "trace or export it with a fixed input size."
        )
    return height, width


def resize_labels_nearest(label_map, size):
    """Nearest-neighbour resize of (B, H, W) label maps to `size` = (h, w), as PIL does it.

    deeplab-pytorch's `resize_labels` shrinks the labels to each logit map with PIL's
    `Image.resize(..., NEAREST)`: output pixel i reads source pixel floor((i + 0.5) · H / h)
    (`nearest_source_indices` reproduces PIL's floating-point walk bit for bit). The index
    tables are built in Python, so H, W, h and w must be static.
    """
    label_map = ops.convert_to_tensor(label_map)
    in_h, in_w = _static_size(label_map, "label maps")
    out_h, out_w = (int(length) for length in size)
    if (in_h, in_w) == (out_h, out_w):
        return label_map
    rows = ops.take(label_map, ops.convert_to_tensor(nearest_source_indices(in_h, out_h), "int32"), axis=1)
    return ops.take(rows, ops.convert_to_tensor(nearest_source_indices(in_w, out_w), "int32"), axis=2)


def segmentation_cross_entropy(logits, label_map, ignore_index=IGNORE_INDEX):
    """Mean per-pixel cross-entropy over labelled pixels (torch's CrossEntropyLoss(ignore_index)).

    Pixels equal to `ignore_index`, or outside 0..K − 1, are left out; with no labelled pixel
    the loss is 0 (torch returns NaN).

    Args:
        logits: (B, h, w, K) logits at the label map's size.
        label_map: (B, h, w) int labels.
    """
    logits = ops.cast(logits, "float32")
    label_map = ops.cast(label_map, "int32")
    valid = (label_map != ignore_index) & (label_map >= 0) & (label_map < logits.shape[-1])
    losses = pixel_cross_entropy(logits, label_map, valid)
    count = ops.sum(ops.cast(valid, "float32"))
    return ops.sum(losses) / ops.maximum(count, 1.0)


def _scaled_size(images, scale):
    """floor(scale · H), floor(scale · W): the size torch's interpolate(scale_factor=s) gives."""
    height, width = _static_size(images, "images")
    return max(int(height * scale), 1), max(int(width * scale), 1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DeepLabV2(WSSSModel):
    """DeepLab-v2: a dilated ResNet, a summed ASPP classifier and optional MSC training.

    `call(images)` returns logits at the backbone's output stride, (B, h, w, num_classes),
    background first: with MSC, the pixel-wise max of the scale-1 logits and the logits of
    every `msc_scales` input, the latter bilinearly upsampled to the scale-1 size. With
    `training=True` it returns a dict instead, for `compute_loss`: `"logits"` (the fused
    logits) and `"scale_logits"` (the list of per-scale logits, scale 1 first, each at its own
    size). See the module docstring for what follows deeplab-pytorch and what differs.

    Training (`fit`, on every backend): targets are a dict holding `"label_maps"`, (B, H, W)
    ints at the input crop's size (0 background, 1..C classes, 255 ignore); a bare label-map
    array is accepted too. The loss is the sum, over the scale-1 logits, each MSC scale's
    logits and (with MSC) the fused logits, of the cross-entropy (mean over labelled pixels),
    with the label map nearest-resized to each logit map (`loss_resolution="logits"`, the
    reference) or each logit map bilinearly upsampled to the labels (`"labels"`).

    Args:
        backbone: a `wsss_keras.backbones.resnet.ResNet` (or its config dict). The paper's is
            ResNet-101, output stride 8, `dilation="uniform"`, `frozen_batchnorm="all"`
            (`build_deeplab_v2` makes it); tiny ones (`block_counts=(1, 1, 1, 1)`,
            `base_width=8`) serve CPU recipes and tests.
        num_classes: classes INCLUDING background (21 for VOC).
        rates: ASPP dilation rates, (6, 12, 18, 24).
        msc_scales: extra input scales of the MSC wrapper, (0.5, 0.75) in the paper recipe;
            () disables MSC (plain DeepLab-v2, one loss term).
        loss_resolution: "logits" (labels nearest-resized to each logit map; the reference)
            or "labels" (logits bilinearly upsampled to the label size).
        ignore_index: label value left out of the loss (255).
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments. Images are normalised
            torchvision-style (ImageNet mean and std) by default.

    Example:
    ```python
    from wsss_keras.backbones.resnet import build
    from wsss_keras.training.optimizers import GroupedSGD
    from wsss_keras.training.schedules import PolyWarmup

    backbone = build("resnet50", block_counts=(1, 1, 1, 1), base_width=8, output_stride=8,
                     dilation="uniform", frozen_batchnorm="all")
    model = DeepLabV2(backbone, num_classes=21)
    logits = model.segment_logits(images)             # (B, ceil(H/8), ceil(W/8), 21)
    optimizer = GroupedSGD(PolyWarmup(2.5e-4, 0, 20000), lr_multipliers=model.lr_multipliers,
                           momentum=0.9, weight_decay=5e-4,
                           weight_decay_multipliers=model.weight_decay_multipliers)
    model.compile(optimizer=optimizer)
    model.fit(loader)  # yields (images, {"label_maps": (B, H, W) ints, ...})
    ```
    """

    def __init__(
        self,
        backbone,
        num_classes,
        rates=ASPP_RATES,
        msc_scales=MSC_SCALES,
        loss_resolution="logits",
        ignore_index=IGNORE_INDEX,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        if not isinstance(backbone, keras.layers.Layer) or not hasattr(backbone, "num_features"):
            raise ValueError(
                f"backbone must be a wsss_keras ResNet (a Keras layer with `num_features`), got "
                f"{type(backbone).__name__}; build one with wsss_keras.backbones.resnet.build or load_pretrained."
            )
        if loss_resolution not in LOSS_RESOLUTIONS:
            raise ValueError(
                f"loss_resolution={loss_resolution!r}: choose 'logits' (labels nearest-resized to the "
                "logits, the reference) or 'labels' (logits upsampled to the labels)."
            )
        msc_scales = tuple(float(scale) for scale in msc_scales)
        if any(scale <= 0.0 or scale == 1.0 for scale in msc_scales):
            raise ValueError(
                f"msc_scales={msc_scales!r} must be positive and exclude 1.0 (scale 1 is always used); "
                f"the paper uses {MSC_SCALES}, () disables MSC."
            )
        if self.class_names is not None and len(self.class_names) != int(num_classes):
            raise ValueError(
                f"num_classes={num_classes} counts background, but class_names has {len(self.class_names)} "
                "names; list the background first."
            )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.rates = tuple(int(rate) for rate in rates)
        self.msc_scales = msc_scales
        self.loss_resolution = loss_resolution
        self.ignore_index = int(ignore_index)
        self.aspp = ASPPSum(self.num_classes, self.rates, name="aspp")
        self.build()

    def build(self, input_shape=None):
        if self.built:
            return
        if not self.backbone.built:
            self.backbone.build((None, None, None, 3))
        self.aspp.build((None, None, None, self.backbone.num_features))
        self.built = True

    def build_from_config(self, config):
        # Every variable's shape follows from the config, whatever the input size.
        self.build()

    @property
    def lr_multipliers(self):
        """{path substring: multiplier} for `GroupedSGD`: ASPP biases 20x, ASPP kernels 10x.

        Backbone variables match neither and keep 1x. The substrings are `"aspp/bias"` and
        `"aspp/kernel"` (the ASPP layer's name, then its weights' name prefix).
        """
        return {
            f"{self.aspp.name}/bias": ASPP_BIAS_LR_MULTIPLIER,
            f"{self.aspp.name}/kernel": ASPP_KERNEL_LR_MULTIPLIER,
        }

    @property
    def weight_decay_multipliers(self):
        """{path substring: multiplier} of the weight decay for `GroupedSGD`: 0 on the ASPP
        biases (deeplab-pytorch's 20x group has weight_decay 0.0), 1 elsewhere."""
        return {f"{self.aspp.name}/bias": 0.0}

    @property
    def output_stride(self):
        """Input pixels per logit (the backbone's output stride)."""
        return self.backbone.output_stride

    # Forward passes -----------------------------------------------------------------------
    def single_scale_logits(self, images, training=None):
        """Backbone + ASPP on `images` as given: (B, ceil(H/os), ceil(W/os), num_classes)."""
        return self.aspp(self.backbone(images, training=training))

    def call(self, images, training=None):
        images = ops.convert_to_tensor(images, self.compute_dtype)
        scale_logits = [self.single_scale_logits(images, training=training)]
        for scale in self.msc_scales:
            scaled = resize_bilinear(images, _scaled_size(images, scale))
            scale_logits.append(self.single_scale_logits(scaled, training=training))
        fused = scale_logits[0]
        if len(scale_logits) > 1:
            size = _static_size(fused, "logits")
            for logits in scale_logits[1:]:
                fused = ops.maximum(fused, resize_bilinear(logits, size))
        if training:
            return {"logits": fused, "scale_logits": scale_logits}
        return fused

    def segment_logits(self, images):
        """Inference logits (B, h, w, num_classes) at the output stride (MSC-fused when on);
        the pipeline upsamples them."""
        return self(images, training=False)

    # Training ------------------------------------------------------------------------------
    def loss_terms(self, y_pred, label_maps):
        """The cross-entropy terms, in order: scale 1, each MSC scale, then (with MSC) the fused logits."""
        if isinstance(y_pred, dict):
            outputs = list(y_pred["scale_logits"])
            if len(outputs) > 1:
                outputs.append(y_pred["logits"])
        else:
            outputs = [y_pred]
        label_maps = ops.cast(label_maps, "int32")
        terms = []
        for logits in outputs:
            if self.loss_resolution == "logits":
                labels = resize_labels_nearest(label_maps, _static_size(logits, "logits"))
            else:
                labels = label_maps
                logits = resize_bilinear(ops.cast(logits, "float32"), _static_size(label_maps, "label maps"))
            terms.append(segmentation_cross_entropy(logits, labels, self.ignore_index))
        return terms

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError(
                "DeepLabV2 takes no sample_weight; mark pixels to skip with the ignore label "
                f"{self.ignore_index} in the label maps instead."
            )
        label_maps = y.get("label_maps") if isinstance(y, dict) else y
        if label_maps is None:
            raise ValueError(
                "DeepLabV2 trains on (images, targets) with targets a dict holding 'label_maps' "
                "((B, H, W) ints, 255 = ignore); ask the loader for label maps (with_label_maps=True)."
            )
        if y_pred is None:
            y_pred = self(x, training=training)
        terms = self.loss_terms(y_pred, label_maps)
        return sum(terms[1:], terms[0])

    # Serialisation -------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            backbone=keras.saving.serialize_keras_object(self.backbone),
            num_classes=self.num_classes,
            rates=list(self.rates),
            msc_scales=list(self.msc_scales),
            loss_resolution=self.loss_resolution,
            ignore_index=self.ignore_index,
        )
        return config


def build_deeplab_v2(num_classes, arch="resnet101", weights=None, backbone_kwargs=None, **model_kwargs):
    """A `DeepLabV2` with the paper recipe's backbone settings (spec §4.7) unless overridden.

    Args:
        num_classes: classes including background.
        arch: "resnet101" (paper) or "resnet50".
        weights: optional local torchvision ResNet checkpoint (ImageNet) for the backbone;
            None leaves it randomly initialised.
        backbone_kwargs: `ResNet` arguments over `DEEPLAB_V2_BACKBONE` (output stride 8,
            uniform dilation, all BatchNorm frozen, stem trained); e.g. `block_counts=(1, 1, 1,
            1), base_width=8` for a tiny CPU network.
        **model_kwargs: `DeepLabV2` arguments (msc_scales, loss_resolution, class_names, ...).

    Example:
    ```python
    model = build_deeplab_v2(21, weights="resnet101-63fe2227.pth", class_names=VOC_CLASSES)
    tiny = build_deeplab_v2(4, backbone_kwargs={"block_counts": (1, 1, 1, 1), "base_width": 8}, msc_scales=())
    ```
    """
    from wsss_keras.backbones import resnet

    settings = {**DEEPLAB_V2_BACKBONE, **dict(backbone_kwargs or {})}
    if weights is not None:
        backbone = resnet.load_pretrained(weights, arch, **settings)
    else:
        backbone = resnet.build(arch, **settings)
    return DeepLabV2(backbone, num_classes, **model_kwargs)
