"""AdvCAM's anti-adversarial climbing (Lee et al., CVPR 2021), as AMR's released code runs it.

Optional and off by default: it costs about 2 x (13 + 6 x 27) = 350 forward and backward passes
per image and class with the reference's seven scales (`[cams] adversarial` switches it on).
Spec methods/amr.md §4.1, verified in AMR's `step/make_cam.py` / `step/gradCAM.py` (AdvCAM's):

Per branch of the model (AMR: spotlight and compensation) and per ground-truth class c, starting
each class from the clean views X = [x_s, mirror(x_s)] at every scale s:

1. the branch's raw maps Z = W * F(x) and their Grad-CAM in closed form: the reference's
   Grad-CAM of this linear head is (P_j / N) · ReLU(Z_jc), with P_j the positive pixels of
   image j's map, N = K+ (P_0 + P_1) and K+ the positive weights of W's column c (a constant
   for autodiff; 0 when N = 0); R = A_0 + mirror(A_1);
2. the map is accumulated with weight 2 (the reference's `mul_for_scale`, which its first
   scale sets to 2 and never resets);
3. the views climb the gradient of sum_j (y_jc - sum_{k != c} y_jk) - 7 · sum(M ⊙ |R - R⁰|),
   y the GAP of ReLU(Z), R⁰ the first map, M the pixels where R / max R > 0.5 (constants):
   x <- clip(x + 0.08 · g / max|g|, min x, max x), bounds and max over the whole view tensor;
4. 27 steps, 13 at scale 0.5; the map of the last step is accumulated, its climb is not used.

Each branch's maps are summed over scales at the image size and divided per class by their
maximum (+1e-5); the branches are then mixed with the model's weights. What differs: the
views are resized bilinearly (the reference rescales with PIL's bicubic), and the maps go
straight to the image size (the reference sums them at 16 · ceil(H / 16) and crops).
"""

from keras import ops

from wsss_keras.ops.cam import resize_bilinear
from wsss_keras.ops.grad import value_and_gradient

ADVCAM_DEFAULTS = {
    "iterations": 27, "small_scale_iterations": 13, "step": 0.08, "mask_weight": 7.0, "mask_threshold": 0.5,
    "accumulate": 2.0,
}
ADVCAM_SCALES = (1.0, 0.5, 0.75, 1.25, 1.5, 1.75, 2.0)


def gradcam_closed_form(class_maps, kernel_column):
    """The reference's Grad-CAM of one class for a view pair, from the raw maps.

    Args:
        class_maps: (2, h, w) raw maps Z_jc of the view and its mirror.
        kernel_column: (channels,) the classifier's weights of the class.

    Returns:
        (h, w): A_0 + mirror(A_1), A_j = (P_j / N) · ReLU(Z_jc), the factor a constant.
    """
    positive = ops.sum(ops.cast(class_maps > 0, "float32"), axis=(1, 2))
    total = ops.sum(ops.cast(kernel_column > 0, "float32")) * ops.sum(positive)
    factor = ops.stop_gradient(ops.where(total > 0, positive / ops.maximum(total, 1.0), 0.0))
    maps = factor[:, None, None] * ops.relu(ops.cast(class_maps, "float32"))
    return maps[0] + ops.flip(maps[1], axis=1)


def climb_class(branch_maps, kernel, views, class_index, iterations, step=0.08, mask_weight=7.0, mask_threshold=0.5,
                accumulate=2.0):
    """The accumulated climbing maps (h, w) of one class on one view pair (steps 1-4 above).

    Args:
        branch_maps: callable views (2, H, W, 3) -> raw maps (2, h, w, C).
        kernel: (channels, C) the branch's classifier weights.
        views: (2, H, W, 3) the normalised view and its mirror.
        class_index: 0-based foreground class.
    """
    column = kernel[:, class_index]
    others = 1.0 - ops.one_hot(class_index, kernel.shape[-1])
    first, total = None, 0.0

    def objective(x):
        maps = branch_maps(x)
        region = gradcam_closed_form(maps[..., class_index], column)
        reference = ops.stop_gradient(region) if first is None else first
        mask = ops.stop_gradient(ops.cast(region / (ops.max(region) + 1e-12) > mask_threshold, "float32"))
        scores = ops.mean(ops.relu(maps), axis=(1, 2))
        gain = ops.sum(scores[:, class_index]) - ops.sum(scores * others)
        return gain - mask_weight * ops.sum(mask * ops.abs(region - reference)), region

    x = ops.convert_to_tensor(views, "float32")
    for _ in range(int(iterations)):
        (_, region), gradient = value_and_gradient(objective, x)
        region = ops.stop_gradient(region)
        if first is None:
            first = region
        total = total + accumulate * region
        low, high = ops.min(x), ops.max(x)
        x = ops.clip(x + step * gradient / (ops.max(ops.abs(gradient)) + 1e-12), low, high)
    return total


def adversarial_cams(model, image, classes, scales=ADVCAM_SCALES, **options):
    """AdvCAM maps (H, W, k) in [0, 1] of one normalised image for the 0-based `classes`.

    Args:
        model: a model with `cam_branches()` (AMR, `CamNetwork`): [(maps function, classifier
            kernel (channels, C), weight), ...].
        image: (H, W, 3) normalised image.
        classes: the image's foreground classes (0-based), usually its labels.
        scales: the views' scales (the reference's seven).
        **options: `ADVCAM_DEFAULTS` overrides.
    """
    settings = {**ADVCAM_DEFAULTS, **options}
    small_iterations = settings.pop("small_scale_iterations")
    iterations = settings.pop("iterations")
    image = ops.convert_to_tensor(image, "float32")
    height, width = image.shape[0], image.shape[1]
    fused = 0.0
    for branch_maps, kernel, weight in model.cam_branches():
        per_class = []
        for class_index in classes:
            total = 0.0
            for scale in scales:
                size = (max(1, round(scale * height)), max(1, round(scale * width)))
                view = resize_bilinear(image[None], size)
                views = ops.concatenate([view, ops.flip(view, axis=2)], axis=0)
                steps = small_iterations if scale == 0.5 else iterations
                climbed = climb_class(branch_maps, kernel, views, int(class_index), steps, **settings)
                total = total + resize_bilinear(climbed[None, :, :, None], (height, width))[0, :, :, 0]
            per_class.append(total / (ops.max(total) + 1e-5))
        if per_class:
            fused = fused + weight * ops.stack(per_class, axis=-1)
    if not len(classes):
        return ops.zeros((height, width, 0))
    return fused
