"""The self-check: every artifact runs next to the Keras graph on sample images; it passes on
label agreement (`AGREEMENT`) and, for float32 with logits, the largest logit difference
(`FP32_LOGIT_TOLERANCE`); fp16 and int8 can also report both mIoUs on a labelled dataset."""

import numpy as np

from wsss_keras.export.runner import artifact_runner

# The self-check's pass marks: the share of pixels whose label matches the Keras model's ...
AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.98}
# ... and, for float32 artifacts with logits, the largest absolute logit difference.
FP32_LOGIT_TOLERANCE = 1e-3


def compare_outputs(reference, exported):
    """Label agreement (share of pixels) and the largest logit (or CAM) difference of two lists
    of output dicts; None where the outputs lack that kind."""
    agree = total = 0
    largest = None
    for ref, out in zip(reference, exported):
        if "labels" in ref:
            agree += int(np.sum(np.asarray(ref["labels"]) == np.asarray(out["labels"])))
            total += int(np.asarray(ref["labels"]).size)
        for key in ("logits", "cams"):
            if key in ref:
                difference = float(np.max(np.abs(np.asarray(ref[key], np.float32) - np.asarray(out[key], np.float32))))
                largest = difference if largest is None else max(largest, difference)
    return (agree / total if total else None), largest


def evaluation_miou(run, dataset, limit):
    """mIoU (%) of `run(image) -> label map` on up to `limit` images of `dataset`."""
    from wsss_keras.evaluation.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(dataset.num_classes + 1)
    picks = np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).round().astype(int)
    for index in sorted(set(picks.tolist())):
        matrix.update(run(dataset.load_image(int(index))), dataset.load_label_map(int(index)))
    return 100.0 * matrix.scores().miou


def self_check(graph, path, fmt, precision, images, eval_dataset=None, eval_limit=50, echo=print, min_agreement=None):
    """Run the artifact and the Keras graph on `images`; returns the check's record (also for
    the manifest) with "passed" and, when it failed, "message". `min_agreement` replaces the
    label-agreement bar of `AGREEMENT[precision]`."""
    bar = AGREEMENT[precision] if min_agreement is None else float(min_agreement)
    import keras

    def keras_outputs(image):
        return {key: keras.ops.convert_to_numpy(value) for key, value in graph(image[None]).items()}

    reference = [keras_outputs(image) for image in images]
    run = artifact_runner(path, fmt)
    exported = [run(image[None]) for image in images]
    agreement, largest = compare_outputs(reference, exported)
    record = {"images": len(images), "label_agreement": agreement, "max_abs_difference": largest,
              "threshold_agreement": bar}
    failures = []
    if agreement is not None and agreement < bar:
        failures.append(f"labels agree on {100 * agreement:.2f} % of pixels, under {100 * bar:.1f} %")
    if precision == "fp32" and largest is not None:
        record["threshold_difference"] = FP32_LOGIT_TOLERANCE
        if largest > FP32_LOGIT_TOLERANCE:
            failures.append(f"outputs differ by up to {largest:.2e}, over {FP32_LOGIT_TOLERANCE:g}")
    if eval_dataset is not None and "labels" in reference[0]:
        record["miou_keras"] = evaluation_miou(lambda image: keras_outputs(image)["labels"][0], eval_dataset, eval_limit)
        record["miou_artifact"] = evaluation_miou(lambda image: run(image[None])["labels"][0], eval_dataset, eval_limit)
    agreement_text = "-" if agreement is None else f"{100 * agreement:.3f} %"
    largest_text = "-" if largest is None else f"{largest:.2e}"
    line = f"[check] {fmt} {precision}: label agreement {agreement_text}, max abs output difference {largest_text}"
    if "miou_keras" in record:
        line += f", mIoU Keras {record['miou_keras']:.1f} / artifact {record['miou_artifact']:.1f}"
    echo(line + f" on {len(images)} images")
    record["passed"] = not failures
    if failures:
        record["message"] = "; ".join(failures)
    return record
