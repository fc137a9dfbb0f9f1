"""Image and label-map transforms with OpenCV and NumPy (no Keras), used by the loaders.

Images are RGB uint8 in, float32 normalised out; label maps are uint8 with 255 = ignore.
Randomness comes from a `numpy.random.Generator` passed in, so a loader can make every item's
augmentation depend only on (seed, epoch, position) and stay reproducible with workers.
"""

import dataclasses

import cv2
import numpy as np

from wsss_keras.data.imageio import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def rescale(image, label_map, scale):
    """Resize by `scale`: bilinear for the image, nearest for the label map."""
    height, width = image.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label_map is not None:
        label_map = cv2.resize(label_map, size, interpolation=cv2.INTER_NEAREST)
    return image, label_map


def random_rescale(rng, image, label_map, scale_range):
    """Rescale by a factor drawn uniformly from `scale_range` (low, high)."""
    return rescale(image, label_map, rng.uniform(*scale_range))


def random_flip(rng, image, label_map):
    """Mirror left-right with probability 0.5. Returns (image, label_map, flipped)."""
    if rng.random() < 0.5:
        return image[:, ::-1], None if label_map is None else label_map[:, ::-1], True
    return image, label_map, False


def random_crop(rng, image, label_map, crop_size, image_fill=0.0, ignore_index=IGNORE_INDEX):
    """Crop a `crop_size` square at a random place, padding first where the image is smaller.

    Padding takes `image_fill` (0 after normalisation is the mean colour) and `ignore_index` in
    the label map, as in ToCo and IRN.

    Returns:
        (image, label_map, box) where box = (y0, y1, x0, x1) is the part of the crop that holds
        real image pixels; methods use it to keep padding out of their losses.
    """
    height, width = image.shape[:2]
    pad_h, pad_w = max(crop_size - height, 0), max(crop_size - width, 0)
    # Where the image lands inside the padded canvas, and where the crop window starts.
    offset_y, offset_x = int(rng.integers(0, pad_h + 1)), int(rng.integers(0, pad_w + 1))
    canvas_h, canvas_w = height + pad_h, width + pad_w
    top, left = int(rng.integers(0, canvas_h - crop_size + 1)), int(rng.integers(0, canvas_w - crop_size + 1))
    out_image = np.full((crop_size, crop_size) + image.shape[2:], image_fill, dtype=image.dtype)
    out_labels = None if label_map is None else np.full((crop_size, crop_size), ignore_index, dtype=np.uint8)
    # Intersection of the crop window with the image, in canvas coordinates.
    y0, y1 = max(top, offset_y), min(top + crop_size, offset_y + height)
    x0, x1 = max(left, offset_x), min(left + crop_size, offset_x + width)
    if y1 > y0 and x1 > x0:
        out_image[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0 - offset_y : y1 - offset_y, x0 - offset_x : x1 - offset_x]
        if label_map is not None:
            out_labels[y0 - top : y1 - top, x0 - left : x1 - left] = label_map[y0 - offset_y : y1 - offset_y, x0 - offset_x : x1 - offset_x]
    box = (y0 - top, y1 - top, x0 - left, x1 - left)
    return out_image, out_labels, box


def colour_jitter(rng, image, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05):
    """Random brightness, contrast, saturation and hue changes on an RGB uint8 image, in random order."""
    out = image.astype(np.float32)
    for step in rng.permutation(4):
        if step == 0 and brightness:
            out *= rng.uniform(1 - brightness, 1 + brightness)
        elif step == 1 and contrast:
            mean = out.mean()
            out = (out - mean) * rng.uniform(1 - contrast, 1 + contrast) + mean
        elif step == 2 and saturation:
            grey = out @ np.array([0.299, 0.587, 0.114], np.float32)
            out = (out - grey[..., None]) * rng.uniform(1 - saturation, 1 + saturation) + grey[..., None]
        elif step == 3 and hue:
            hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.int32)
            hsv[..., 0] = (hsv[..., 0] + int(round(rng.uniform(-hue, hue) * 180))) % 180
            out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 RGB -> float32, (x/255 - mean) / std per channel."""
    image = image.astype(np.float32) / 255.0
    return (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Inverse of `normalize`, back to uint8 RGB."""
    image = np.asarray(image, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class TrainTransform:
    """Training augmentation: rescale, flip, colour jitter, normalise, crop with ignore padding.

    Args:
        crop_size: side of the square crop.
        scale_range: random rescale factors (low, high); (1, 1) disables it.
        flip: random left-right flip.
        jitter: colour-jitter strengths (brightness, contrast, saturation, hue), or None.
        mean, std: normalisation (ImageNet by default; CLIP's for CLIP towers).
    """

    crop_size: int = 448
    scale_range: tuple = (0.5, 2.0)
    flip: bool = True
    jitter: tuple = (0.3, 0.3, 0.3, 0.05)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __call__(self, rng, image, label_map=None):
        if tuple(self.scale_range) != (1.0, 1.0):
            image, label_map = random_rescale(rng, image, label_map, self.scale_range)
        if self.flip:
            image, label_map, _ = random_flip(rng, image, label_map)
        if self.jitter:
            image = colour_jitter(rng, image, *self.jitter)
        image = normalize(image, self.mean, self.std)
        return random_crop(rng, image, label_map, self.crop_size)


@dataclasses.dataclass
class EvalTransform:
    """Deterministic preprocessing for inference: optional resize to `size` x `size`, normalise."""

    size: int = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __call__(self, rng, image, label_map=None):
        height, width = image.shape[:2]
        if self.size is not None and (height, width) != (self.size, self.size):
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
            if label_map is not None:
                label_map = cv2.resize(label_map, (self.size, self.size), interpolation=cv2.INTER_NEAREST)
            height, width = self.size, self.size
        return normalize(image, self.mean, self.std), label_map, (0, height, 0, width)


def multiscale_flip_views(image, scales=(1.0, 0.5, 1.5, 2.0), flip=True):
    """The views of one (normalised) image for multi-scale + flip inference.

    Returns:
        a list of (scale, flipped, view) with view an array of the rescaled (and mirrored) image;
        CAMs or logits from each view are resized back and fused by the method.
    """
    views = []
    for scale in scales:
        view = image if scale == 1.0 else rescale(image, None, scale)[0]
        views.append((scale, False, view))
        if flip:
            views.append((scale, True, np.ascontiguousarray(view[:, ::-1])))
    return views


def gaussian_blur(rng, image, probability, radius=(0.1, 2.0)):
    """With `probability`, blur with a Gaussian of sigma U(radius) (PIL's GaussianBlur radius)."""
    if probability and rng.random() < probability:
        return cv2.GaussianBlur(image, (0, 0), sigmaX=float(rng.uniform(*radius)))
    return image


def random_grayscale(rng, image, probability):
    """With `probability`, replace RGB by its luma in all three channels."""
    if probability and rng.random() < probability:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return np.repeat(grey[..., None], 3, axis=-1)
    return image


def random_solarize(rng, image, probability, threshold=128):
    """With `probability`, invert the pixels at or above `threshold`."""
    if probability and rng.random() < probability:
        return np.where(image >= threshold, 255 - image, image).astype(image.dtype)
    return image


def random_resized_crop(rng, image, size, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop: a random area fraction and aspect ratio (10 tries, then
    a central crop), resized to `size` x `size` with bicubic interpolation."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        crop_w, crop_h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
            break
    else:
        crop_h, crop_w = min(height, width), min(height, width)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
    patch = image[top : top + crop_h, left : left + crop_w]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_CUBIC)


@dataclasses.dataclass
class ToCoTrainTransform:
    """ToCo's training views (`datasets/voc.py: VOC12ClsDataset`).

    The image is rescaled, flipped and cropped (padding is black, as the reference pads its
    uint8 image with 0, and ignored in the labels), then:
    - main input ("global view 1"): flip, colour jitter (p 0.8), grayscale (p 0.2), blur (p 1);
    - `global_view`: a RandomResizedCrop of the *original* image (scale 0.4–1) at the crop
      size, flip, jitter, grayscale, blur (p 0.1), solarise (p 0.2);
    - `local_source`: the crop with flip, jitter, grayscale, blur (p 0.5); ToCo cuts its local
      crops from it around uncertain CAM regions during training.
    Unlike the reference, the main input's flip also flips its crop box and label map.

    `local_crops_follow_flip`: the reference flips `local_source` independently of the main
    input (False, the default), so half the time ToCo cuts the local crops from the mirror of
    the view whose uncertainty map placed them. True mirrors `local_source` whenever its own
    flip differs from the main input's, so the crops come from the pixels the map describes;
    every random draw is the same either way, so only the orientation changes.

    Returns (image, label_map, box, {"global_view", "local_source"}), all images normalised.
    """

    crop_size: int = 448
    scale_range: tuple = (0.5, 2.0)
    flip: bool = True
    global_scale: tuple = (0.4, 1.0)
    jitter: tuple = (0.4, 0.4, 0.2, 0.1)
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    main_blur_probability: float = 1.0
    global_blur_probability: float = 0.1
    local_blur_probability: float = 0.5
    solarize_probability: float = 0.2
    local_crops_follow_flip: bool = False
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if not isinstance(self.local_crops_follow_flip, bool):
            # A TypeError, so that the train pipeline names the recipe's [train] augment table.
            raise TypeError(f"local_crops_follow_flip={self.local_crops_follow_flip!r}; set it to true or false.")

    def _flip_and_jitter(self, rng, image):
        flipped = bool(rng.random() < 0.5)
        if flipped:
            image = np.ascontiguousarray(image[:, ::-1])
        if self.jitter and rng.random() < self.jitter_probability:
            image = colour_jitter(rng, image, *self.jitter)
        return random_grayscale(rng, image, self.grayscale_probability), flipped

    def __call__(self, rng, image, label_map=None):
        original = image
        if tuple(self.scale_range) != (1.0, 1.0):
            image, label_map = random_rescale(rng, image, label_map, self.scale_range)
        if self.flip:
            image, label_map, _ = random_flip(rng, image, label_map)
        image, label_map, box = random_crop(rng, image, label_map, self.crop_size, image_fill=0)

        local, local_flipped = self._flip_and_jitter(rng, image)
        local = gaussian_blur(rng, local, self.local_blur_probability)
        main, flipped = self._flip_and_jitter(rng, image)
        main = gaussian_blur(rng, main, self.main_blur_probability)
        if self.local_crops_follow_flip and local_flipped != flipped:
            # Mirroring after the colour changes and the (symmetric) blur, not before, keeps
            # the random draws of both settings in step.
            local = np.ascontiguousarray(local[:, ::-1])
        if flipped:
            y0, y1, x0, x1 = box
            box = (y0, y1, self.crop_size - x1, self.crop_size - x0)
            label_map = None if label_map is None else np.ascontiguousarray(label_map[:, ::-1])
        view, _ = self._flip_and_jitter(rng, random_resized_crop(rng, original, self.crop_size, self.global_scale))
        view = random_solarize(rng, gaussian_blur(rng, view, self.global_blur_probability), self.solarize_probability)
        extras = {"global_view": normalize(view, self.mean, self.std), "local_source": normalize(local, self.mean, self.std)}
        return normalize(main, self.mean, self.std), label_map, box, extras


@dataclasses.dataclass
class MultiCropTransform:
    """DINO's multi-crop views (Caron et al., ICCV 2021, `DataAugmentationDINO` in its code), at
    the sizes a recipe gives: two global views, RandomResizedCrops of scale `global_scale` at
    `global_size` (the first always blurred, the second blurred with p 0.1 and solarised with p
    0.2), and `local_crops` views of scale `local_scale` at `local_size` (blurred with p 0.5);
    each flipped, colour-jittered (p 0.8) and greyed (p 0.2) on its own.

    Returns (first global view, None, its box (0, size, 0, size), {"global_view": the second,
    "local_views": (local_crops, local_size, local_size, 3)}), all normalised.
    """

    global_size: int = 96
    local_size: int = 48
    local_crops: int = 4
    global_scale: tuple = (0.4, 1.0)
    local_scale: tuple = (0.05, 0.4)
    jitter: tuple = (0.4, 0.4, 0.2, 0.1)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def _view(self, rng, image, size, scale, blur, solarize=0.0):
        view = random_resized_crop(rng, image, size, scale)
        if rng.random() < 0.5:
            view = np.ascontiguousarray(view[:, ::-1])
        if rng.random() < 0.8:
            view = colour_jitter(rng, view, *self.jitter)
        view = gaussian_blur(rng, random_grayscale(rng, view, 0.2), blur)
        return normalize(random_solarize(rng, view, solarize), self.mean, self.std)

    def __call__(self, rng, image, label_map=None):
        first = self._view(rng, image, self.global_size, self.global_scale, blur=1.0)
        second = self._view(rng, image, self.global_size, self.global_scale, blur=0.1, solarize=0.2)
        local = [self._view(rng, image, self.local_size, self.local_scale, blur=0.5) for _ in range(self.local_crops)]
        local = np.stack(local) if local else np.zeros((0, self.local_size, self.local_size, 3), np.float32)
        return first, None, (0, self.global_size, 0, self.global_size), {"global_view": second, "local_views": local}


def random_resize_long(rng, image, label_map, long_range):
    """Resize so that the longer side is an integer drawn uniformly from `long_range` (inclusive)."""
    target = int(rng.integers(long_range[0], long_range[1] + 1))
    return rescale(image, label_map, target / max(image.shape[:2]))


def cutout(rng, image, count, size, fill=0.0):
    """Set `count` squares of side `size`, centred uniformly in the image and clipped at its
    borders, to `fill` (AMR's `misc/imutils.py::cutout`; 0 is the mean colour once normalised)."""
    image = image.copy()
    height, width = image.shape[:2]
    for _ in range(count):
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        image[max(cy - size // 2, 0) : cy + size // 2, max(cx - size // 2, 0) : cx + size // 2] = fill
    return image


@dataclasses.dataclass
class CamTrainTransform:
    """The classification stage of the IRN pipeline (IRN / AMR / SSC `train_cam`).

    In the reference's order: resize the longer side to a random length in `long_side`
    (inclusive; IRN and AMR: 320..640), normalise, random left-right flip, random crop (zero
    padding, i.e. the mean colour, where the image is smaller; 255 in a label map), then
    `cutout_count` cutout squares of side `cutout_size` (AMR's stage A: 3 x 128; 0 for AMR's
    stage B and IRN). Returns (image, label_map, box) like `TrainTransform`.

    `maps`, a dict of integer maps aligned with the image (SSC's superpixels), go through the
    same resize (nearest), flip and crop (padded with 0, SSC's padding superpixel); they are
    then returned as a fourth item, the extras dict.

    `scale_range` (instead of `long_side`) rescales by a random ratio, WeCLIP's random rescale
    (0.5..2.0). `pad_fill` is the padding's colour: "mean" (0 after normalisation, IRN's) or
    "black" (RGB 0 before normalisation, WeCLIP's `random_crop(mean_rgb=[0, 0, 0])`).
    """

    crop_size: int = 512
    long_side: tuple = (320, 640)
    flip: bool = True
    cutout_count: int = 0
    cutout_size: int = 128
    scale_range: tuple = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    pad_fill: str = "mean"

    def __post_init__(self):
        if self.pad_fill not in ("mean", "black"):
            raise ValueError(f"pad_fill={self.pad_fill!r}: choose 'mean' or 'black'.")

    def __call__(self, rng, image, label_map=None, maps=None):
        maps = dict(maps or {})
        for name, values in maps.items():
            if values.shape[:2] != image.shape[:2]:
                raise ValueError(f"the {name} map is {values.shape[:2]}, its image {image.shape[:2]}; they must match.")
        if self.scale_range or self.long_side:
            original = image.shape[:2]
            if self.scale_range:
                image, label_map = random_rescale(rng, image, label_map, self.scale_range)
            else:
                image, label_map = random_resize_long(rng, image, label_map, self.long_side)
            if image.shape[:2] != original:
                size = (image.shape[1], image.shape[0])
                maps = {name: cv2.resize(values, size, interpolation=cv2.INTER_NEAREST) for name, values in maps.items()}
        image = normalize(image, self.mean, self.std)
        if self.flip:
            image, label_map, flipped = random_flip(rng, image, label_map)
            if flipped:
                maps = {name: values[:, ::-1] for name, values in maps.items()}
        crop_rng_state = rng.bit_generator.state
        fill = 0.0 if self.pad_fill == "mean" else normalize(np.zeros((1, 1, 3), np.uint8), self.mean, self.std)[0, 0]
        image, label_map, box = random_crop(rng, image, label_map, self.crop_size, image_fill=fill)
        for name, values in maps.items():
            # Replay the crop's random draws so every map gets the image's window.
            rng.bit_generator.state = crop_rng_state
            maps[name] = random_crop(rng, values[..., None].astype(np.float32), None, self.crop_size)[0][..., 0].astype(np.int32)
        if self.cutout_count:
            image = cutout(rng, image, self.cutout_count, self.cutout_size)
        if maps:
            return image, label_map, box, maps
        return image, label_map, box
