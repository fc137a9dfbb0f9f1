"""The images an export calibrates int8 on and checks its artifacts with: a folder of images
(or a VOC root), else synthetic scenes."""

import os

import numpy as np

from wsss_keras.errors import DataError

SAMPLE_COUNT = 8
CALIBRATION_LIMIT = 100


def sample_images(folder=None, size=(128, 128), count=SAMPLE_COUNT, seed=0):
    """Up to `count` uint8 RGB images of `folder` (a folder of .jpg/.png), resized to `size`;
    without a folder, synthetic scenes drawn with the synthetic dataset's generator."""
    import cv2

    if folder is None:
        from wsss_keras.data.synthetic import CATALOG, render_sample

        rng = np.random.default_rng(seed)
        images = [render_sample(rng, max(size), CATALOG[:6])[0] for _ in range(count)]
    else:
        from wsss_keras.pipelines.predict import ImageFolder

        found = ImageFolder(folder)
        picks = np.linspace(0, len(found) - 1, min(count, len(found))).round().astype(int)
        images = [found.load_image(int(index)) for index in picks]
    return np.stack([cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for image in images])


def _has_images(folder):
    return any(name.lower().endswith((".jpg", ".jpeg", ".png")) for name in os.listdir(folder))


def image_folder(folder, what):
    """A folder of images, or a dataset root whose JPEGImages holds them (VOC) or holds one folder
    per split (COCO: JPEGImages/train2014, the training split preferred); checked to hold images."""
    if folder is None:
        return None
    from wsss_keras.pipelines.predict import ImageFolder

    if not os.path.isdir(folder):
        raise DataError(f"{folder}: {what} folder not found; give a folder of .jpg/.png images (or a VOC or COCO root).")
    images = os.path.join(folder, "JPEGImages")
    folder = images if os.path.isdir(images) else folder
    if not _has_images(folder):
        splits = sorted((name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))),
                        key=lambda name: (not name.startswith("train"), name))
        folder = next((os.path.join(folder, name) for name in splits if _has_images(os.path.join(folder, name))), folder)
    try:
        ImageFolder(folder)
    except DataError as error:
        raise DataError(f"{error} (the {what} images; give a folder of .jpg/.png images or a VOC or COCO root)") from None
    return folder
