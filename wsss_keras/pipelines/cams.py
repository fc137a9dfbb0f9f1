"""`wsss cams`: multi-scale + flip CAMs of a trained model for every image of a split.

One `<image id>.npz` per image (see `wsss_keras.evaluation.cams`): the CAMs of the image's
present classes at the image's size, in [0, 1]. This module also holds `run_per_image`, the
resumable per-image loop every file-writing stage uses.
"""

import os

import numpy as np

from wsss_keras.errors import DataError, WSSSError


def partial_path(path):
    """Where `path` is written before it is moved into place: a hidden file with the same extension."""
    folder, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    return os.path.join(folder, f".{stem}.partial{ext}")


def run_per_image(names, outputs, work, overwrite=False, progress=None):
    """Run `work(index, paths)` for each image whose outputs are not all there yet.

    Each output is written to a partial path and moved into place when `work` returns, so an
    interrupted run leaves no half-written file that a resumed run would take as done.

    Args:
        names: image ids.
        outputs: callable name -> list of output paths.
        work: callable (index, list of paths to write) -> None.
        overwrite: also redo images whose outputs exist.
        progress: optional callable(done, total), called for skipped images too.

    Returns:
        the number of images processed (not skipped).
    """
    written = 0
    for index, name in enumerate(names):
        final = outputs(name)
        if overwrite or not all(os.path.isfile(path) for path in final):
            temporary = [partial_path(path) for path in final]
            for path in final:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            try:
                work(index, temporary)
                for source, target in zip(temporary, final):
                    os.replace(source, target)
            finally:
                for path in temporary:
                    if os.path.exists(path):
                        os.remove(path)
            written += 1
        if progress is not None:
            progress(index + 1, len(names))
    return written


def check_scales(scales):
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise WSSSError(f"scales {scales}: give one or more positive scales, e.g. 1.0,0.5,1.5.")
    return scales


def check_class_count(channels, dataset, what):
    if channels != dataset.num_classes - 1:
        raise DataError(
            f"the model's {what} have {channels} foreground classes but {dataset.description} has "
            f"{dataset.num_classes - 1}; use the model trained on this dataset (or its class-names file)."
        )


def compute_cams(model, dataset, out_dir, scales=(1.0, 0.5, 1.5), flip=True, resize=None, progress=None, overwrite=False,
                 adversarial=None):
    """Write the CAMs of every image of `dataset` to `out_dir/<image id>.npz`.

    Per image: normalise with the model's mean and std, optionally resize to `resize` x `resize`
    (ToCo's infer_cam uses 448), `multiscale_cams` (per scale the CAMs of the image and of its
    mirror fused by max, ReLU, summed over scales, min-max normalised), bilinear back to the
    image size, and keep the maps of the classes the image contains (`dataset.labels`).

    Args:
        model: a `WSSSModel` (see `model_io.load_model`).
        dataset: a `SegmentationDataset` (image-level labels choose the maps kept).
        out_dir: output folder (created).
        scales, flip: the multi-scale + flip views.
        resize: None, or the square side the image is resized to before the views.
        progress: optional callable(done, total).
        overwrite: recompute images whose file exists (default: skip them, so runs resume).
        adversarial: None (plain CAMs), or True / a dict of `ADVCAM_DEFAULTS` overrides for
            AdvCAM's anti-adversarial climbing per present class (`methods.advcam`; the views
            always include the mirror; very expensive).

    Returns:
        the number of images computed (skipped ones not counted).
    """
    from keras import ops

    from wsss_keras.data.transforms import normalize
    from wsss_keras.evaluation.cams import save_cams
    from wsss_keras.ops.cam import resize_bilinear
    from wsss_keras.pipelines.inference import LabelledMultiScaleCams, MultiScaleCams

    scales = check_scales(scales)
    if resize is not None and int(resize) < 1:
        raise WSSSError(f"resize {resize}: give a positive side in pixels, or none.")

    labelled = getattr(model, "cams_need_labels", False)
    if labelled and hasattr(model, "max_labels_per_image"):
        # Labelled CAMs (WeCLIP, SSR) need only as many Grad-CAMs as the split's busiest image.
        model.max_labels_per_image = dataset.max_labels_per_image
    runner = LabelledMultiScaleCams(model, scales, flip) if labelled else MultiScaleCams(model, scales, flip)
    if adversarial:
        from wsss_keras.methods.advcam import adversarial_cams

        if not hasattr(model, "cam_branches"):
            raise WSSSError(f"AdvCAM needs a CAM network with a linear head (AMR, CamNetwork); {type(model).__name__} has none.")
        options = dict(adversarial) if isinstance(adversarial, dict) else {}

    def work(index, paths):
        if adversarial:
            image = dataset.load_image(index)
            inputs = ops.convert_to_tensor(normalize(image, model.image_mean, model.image_std))
            if resize:
                inputs = resize_bilinear(inputs[None], (int(resize), int(resize)))[0]
            classes = np.flatnonzero(dataset.labels[index])
            cams = adversarial_cams(model, inputs, classes, scales=scales, **options)
            cams = ops.convert_to_numpy(resize_bilinear(ops.convert_to_tensor(cams)[None], image.shape[:2]))[0]
            save_cams(paths[0], np.clip(cams, 0.0, 1.0), classes + 1)
            return

        image = dataset.load_image(index)
        height, width = image.shape[:2]
        inputs = ops.convert_to_tensor(normalize(image, model.image_mean, model.image_std)[None])
        if resize:
            inputs = resize_bilinear(inputs, (int(resize), int(resize)))
        batch = (inputs, dataset.labels[index][None].astype("float32")) if labelled else inputs
        cams = ops.convert_to_tensor(runner.predict_on_batch(batch))
        check_class_count(cams.shape[-1], dataset, "CAMs")
        cams = ops.convert_to_numpy(resize_bilinear(cams, (height, width)))[0]
        classes = np.flatnonzero(dataset.labels[index]) + 1
        save_cams(paths[0], np.clip(cams[..., classes - 1], 0.0, 1.0), classes)

    return run_per_image(
        dataset.names, lambda name: [os.path.join(out_dir, f"{name}.npz")], work, overwrite, progress
    )
