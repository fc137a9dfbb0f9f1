"""Data benchmark: synthetic generation time and loader throughput (prints figures, asserts nothing).

    python bench/bench_data.py [--backend tensorflow] [--crop-size 96] [--batch-size 16]

Loader throughput is measured two ways over one epoch of the default synthetic train split
with the training transform: calling the PyDataset directly in this thread ("0 workers"), and
through Keras's own data pipeline (`model.predict` on a model that only pools its input) with
1 and 2 worker threads and 2 worker processes.
"""

import argparse
import os
import sys
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--crop-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from wsss_keras.data import VocDataset
    from wsss_keras.data.synthetic import generate

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        info = generate(os.path.join(folder, "synth"))
        elapsed = time.perf_counter() - start
        images = info["splits"]["train"] + info["splits"]["val"]
        print(f"wsss data synth (defaults: {images} images of {info['size']} px): {elapsed:.1f} s, {images / elapsed:.0f} images/s")

        import keras

        from wsss_keras.data.loader import SegmentationLoader
        from wsss_keras.data.transforms import TrainTransform

        dataset = VocDataset(os.path.join(folder, "synth"), "train")
        transform = TrainTransform(crop_size=args.crop_size, scale_range=(0.5, 1.5))
        print(f"loader epoch: {len(dataset)} images, batch {args.batch_size}, crop {args.crop_size}, backend {keras.backend.backend()}, {os.cpu_count()} cores")

        loader = SegmentationLoader(dataset, args.batch_size, transform, shuffle=True)
        start = time.perf_counter()
        for index in range(len(loader)):
            loader[index]
        direct = time.perf_counter() - start
        print(f"  0 workers (direct __getitem__):   {len(dataset) / direct:7.0f} images/s")

        pool = keras.Sequential([keras.Input((args.crop_size, args.crop_size, 3)), keras.layers.GlobalAveragePooling2D()])
        for workers, processes in ((1, False), (2, False), (2, True)):
            loader = SegmentationLoader(dataset, args.batch_size, transform, shuffle=True, workers=workers, use_multiprocessing=processes)
            pool.predict(loader, verbose=0)  # warm-up: tracing and pool start
            start = time.perf_counter()
            pool.predict(loader, verbose=0)
            elapsed = time.perf_counter() - start
            kind = "processes" if processes else "threads"
            print(f"  {workers} worker {kind:<9} (Keras predict): {len(dataset) / elapsed:7.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
