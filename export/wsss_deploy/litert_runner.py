"""Segment images with an exported `.tflite` (LiteRT), without Keras or TensorFlow.

    python -m wsss_deploy.litert_runner model.tflite image.jpg [more.jpg ...] --out masks/ [--repeat 20]

Each image's label map is written as a palette PNG (the manifest's palette), and the latency of
one forward pass is printed (median and mean over `--repeat` runs, after one warm-up). The graph
takes the uint8 RGB image as it is: resizing and normalisation happen inside it.
"""

import argparse
import os
import sys
import time

import numpy as np

from wsss_deploy.label_maps import label_png
from wsss_deploy.manifest import ManifestError, read_manifest


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise ImportError("running a .tflite needs ai-edge-litert: pip install ai-edge-litert") from None
    return Interpreter


class LiteRTSegmenter:
    """A `.tflite` exported by `wsss export`, run through its signature.

    Args:
        path: the `.tflite` file.
        threads: interpreter threads (None: LiteRT's default).

    Example:
    >>> runner = LiteRTSegmenter("model.tflite")  # doctest: +SKIP
    >>> runner.run(image[None])["labels"].shape  # doctest: +SKIP
    (1, 128, 128)
    """

    def __init__(self, path, threads=None):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such .tflite file.")
        self.path = path
        self.interpreter = _interpreter_class()(model_path=path, num_threads=threads)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError(f"{path}: the model has no signature; export it again with `wsss export`.")
        self.signature = next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(self.signature)
        self.input_name = signatures[self.signature]["inputs"][0]

    def run(self, images):
        """{output name: array} for uint8 RGB `images` (B, H, W, 3)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images (B, H, W, 3); got shape {images.shape}.")
        return self.runner(**{self.input_name: images})


def read_rgb(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def write_label_png(path, labels, palette):
    with open(path, "wb") as handle:
        handle.write(label_png(labels, palette))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m wsss_deploy.litert_runner", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .tflite file (its manifest.json beside it)")
    parser.add_argument("images", nargs="+", help="RGB images (.jpg/.png)")
    parser.add_argument("--out", default=None, help="folder for the label PNGs (default: print only)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per image (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="interpreter threads (default: LiteRT's)")
    args = parser.parse_args(argv)
    try:
        manifest = read_manifest(args.model)
        runner = LiteRTSegmenter(args.model, args.threads)
    except (ManifestError, FileNotFoundError, ValueError, ImportError) as error:
        parser.exit(2, f"error: {error}\n")
    if "labels" not in {output["name"] for output in manifest["outputs"]}:
        parser.exit(2, f"error: {args.model} outputs {manifest['output']}, not labels; export with --output logits or labels.\n")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    classes = manifest["classes"]
    for path in args.images:
        try:
            image = read_rgb(path)
        except (OSError, ValueError) as error:
            parser.exit(2, f"error: {path}: not a readable image ({error}).\n")
        runner.run(image[None])  # warm-up: the first run allocates for this size
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            outputs = runner.run(image[None])
            times.append(time.perf_counter() - start)
        labels = np.asarray(outputs["labels"])[0]
        present = [classes[index] if index < len(classes) else str(index) for index in np.unique(labels)]
        print(f"{path}: {image.shape[1]}x{image.shape[0]}, {1000 * np.median(times):.1f} ms median, "
              f"{1000 * np.mean(times):.1f} ms mean over {len(times)} runs; classes: {', '.join(present)}")
        if args.out:
            write_label_png(os.path.join(args.out, os.path.splitext(os.path.basename(path))[0] + ".png"), labels,
                            manifest["palette"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
