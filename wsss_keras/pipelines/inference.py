"""Compiled inference wrappers: multi-scale CAMs and segmentation logits as Keras models.

Calling a method's `cam_maps` eagerly runs op by op, which on the TensorFlow and PyTorch
backends costs more than the arithmetic for small models. Wrapping the fused computation in a
`keras.Model` and calling `predict_on_batch` lets Keras compile it (tf.function, jax.jit) once
per input shape, on every backend, without backend-specific code here.

One compiled function per input shape, explicitly: TensorFlow's `predict_on_batch` relaxes
the shape of a function retraced for several sizes to `None`, and these computations need
static sizes (the views' sizes are computed from the input's). Images of a real dataset
come in many sizes, so the wrappers keep the compiled function of each recent shape.
"""

from collections import OrderedDict

import keras
from keras import ops

from wsss_keras.ops.cam import multiscale_cams, refine_pseudo_labels, resize_bilinear


class PerShapeInference(keras.Model):
    """A `keras.Model` whose `predict_on_batch` compiles once per input shape.

    Args:
        max_shapes: how many compiled functions to keep (least recently used dropped).
    """

    def __init__(self, max_shapes=64, **kwargs):
        super().__init__(**kwargs)
        self.max_shapes = max_shapes
        self._functions = OrderedDict()

    def predict_on_batch(self, x):
        key = tuple(tuple(ops.shape(tensor)) for tensor in keras.tree.flatten(x))
        # Keras builds a new predict function when the attribute is None; hand it the one
        # compiled for this shape, or None so that it compiles one that sees only this shape.
        self.predict_function = self._functions.pop(key, None)
        outputs = super().predict_on_batch(x)
        self._functions[key] = self.predict_function
        while len(self._functions) > self.max_shapes:
            self._functions.popitem(last=False)
        return outputs


class MultiScaleCams(PerShapeInference):
    """`multiscale_cams(model.cam_maps, images, scales, flip)` as a model (B, H, W, C) in [0, 1).

    A model with several CAM branches (AMR: spotlight and compensation) exposes
    `branch_cam_maps` and `cam_branch_weights`: each branch's maps are fused over the views and
    normalised on their own, then weighted and summed, as AMR's recalibrated CAM is made.
    """

    def __init__(self, model, scales=(1.0, 0.5, 1.5), flip=True, **kwargs):
        super().__init__(**kwargs)
        self.method, self.scales, self.flip = model, tuple(scales), bool(flip)

    def call(self, images):
        if hasattr(self.method, "branch_cam_maps"):
            # The flip views are [images, mirrors]: AMR pairs each image with its mirror there.
            branches = multiscale_cams(
                lambda views: self.method.branch_cam_maps(views, mirrored=self.flip), images, self.scales, self.flip
            )
            weights = self.method.cam_branch_weights
            return sum(weight * cams for weight, cams in zip(weights, branches))
        return multiscale_cams(self.method.cam_maps, images, self.scales, self.flip)


class LabelledMultiScaleCams(PerShapeInference):
    """`multiscale_cams` of a model whose CAMs depend on the image's labels (WeCLIP/SSR's
    Grad-CAM softmax runs over the present classes): (images, labels (B, C)) -> (B, H, W, C)."""

    def __init__(self, model, scales=(1.0, 0.5, 1.5), flip=True, **kwargs):
        super().__init__(**kwargs)
        self.method, self.scales, self.flip = model, tuple(scales), bool(flip)

    def call(self, inputs):
        images, labels = inputs
        return multiscale_cams(lambda views: self.method.cam_maps(views, labels), images, self.scales, self.flip)


class OnlinePseudoLabels(PerShapeInference):
    """A frozen-CLIP method's online pseudo-labels as a model: (images, labels[, regions]) ->
    (B, H, W) label map (Grad-CAM, affinity propagation, PAR, argmax)."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.method = model

    def call(self, inputs):
        images, labels, *regions = inputs
        targets = {"labels": labels, **({"regions": regions[0]} if regions else {})}
        return self.method.online_pseudo_labels(images, labels, targets)


# How the views' logits merge: the mirror into its image, then the scales into one map.
MERGES = ("sum", "mean", "max")


def _merge(first, second, how):
    if how == "max":
        return ops.maximum(first, second)
    return first + second  # "mean" divides once all are summed


class MultiScaleSegmentation(PerShapeInference):
    """Multi-scale segmentation logits at the input's size.

    Per scale the logits of the view and the un-mirrored logits of its mirror merge by
    `flip_merge`, go bilinear to the input size, and the scales merge by `scale_merge`. ToCo's
    VOC protocol (tools/infer_seg_voc.py) is the default, flips summed and the maximum over
    scales; its COCO script takes the maximum of the flips and sums the scales; WeCLIP's test
    averages both.
    """

    def __init__(self, model, scales=(1.0,), flip=False, flip_merge="sum", scale_merge="max", **kwargs):
        super().__init__(**kwargs)
        for name, how in (("flip_merge", flip_merge), ("scale_merge", scale_merge)):
            if how not in MERGES:
                raise ValueError(f"{name} = {how!r}: choose one of {', '.join(MERGES)}.")
        self.method, self.scales, self.flip = model, tuple(scales), bool(flip)
        self.flip_merge, self.scale_merge = flip_merge, scale_merge

    def call(self, images):
        height, width = images.shape[1], images.shape[2]
        fused = None
        for scale in self.scales:
            view = resize_bilinear(images, (int(scale * height), int(scale * width)))
            logits = self.method.segment_logits(view)
            if self.flip:
                mirrored = ops.flip(self.method.segment_logits(ops.flip(view, axis=2)), axis=2)
                logits = _merge(logits, mirrored, self.flip_merge)
                if self.flip_merge == "mean":
                    logits = logits / 2.0
            logits = resize_bilinear(logits, (height, width))
            fused = logits if fused is None else _merge(fused, logits, self.scale_merge)
        return fused / len(self.scales) if self.scale_merge == "mean" else fused


class PseudoLabelRefiner(PerShapeInference):
    """`refine_pseudo_labels` as a model: (RGB in [0, 1], CAMs, image labels) -> label map."""

    def __init__(self, high=0.7, low=0.25, down_scale=2, **par_options):
        super().__init__()
        self.high, self.low, self.down_scale, self.par_options = high, low, down_scale, par_options

    def call(self, inputs):
        images, cams, labels = inputs
        return refine_pseudo_labels(images, cams, labels, self.high, self.low, down_scale=self.down_scale, **self.par_options)


class BoundaryMaps(PerShapeInference):
    """IRNet's `boundary_map` (image and mirror) as a model: (B, H, W, 3) -> (B, ceil(H/4), ceil(W/4))."""

    def __init__(self, irn, **kwargs):
        super().__init__(**kwargs)
        self.irn = irn

    def call(self, images):
        return self.irn.boundary_map(images)


class RandomWalk(PerShapeInference):
    """`random_walk(cams ** power, boundary)` as a model: ((h, w, K) CAMs, (h, w) boundary) ->
    (h, w, K); compiled, its 2**exp_times steps run as one loop instead of op by op."""

    def __init__(self, power=1.5, radius=5, beta=10.0, exp_times=8, **kwargs):
        super().__init__(**kwargs)
        self.power, self.radius, self.beta, self.exp_times = power, radius, beta, exp_times

    def call(self, inputs):
        from wsss_keras.ops.affinity import random_walk

        cams, boundary = inputs
        seeds = ops.power(ops.relu(cams[0]), self.power)
        return random_walk(seeds, boundary[0], self.radius, self.beta, self.exp_times)[None]
