"""Train the plain CNN CAM network on the synthetic data for a time budget; print CAM mIoU.

    python bench/bench_cam_baseline.py [--minutes 3] [--seeds 0] [--data DIR]

This is the bar of the CPU recipes (a method's CAMs must localise at least this well with the
same data and time) and a check that the synthetic traps bite: per-class precision of the
co-occurrence classes and recall of the under-activation classes are printed.
"""

import argparse
import os
import sys
import tempfile
import time


def train_and_score(data, seed, minutes, crop_size, batch_size, split="val"):
    import keras
    import numpy as np

    from wsss_keras.data import VocDataset
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import EvalTransform, TrainTransform
    from wsss_keras.evaluation.cams import ThresholdSweep
    from wsss_keras.methods.cam_baseline import CamBaseline
    from wsss_keras.pipelines.inference import MultiScaleCams

    keras.utils.set_random_seed(seed)
    train = VocDataset(data, "train")
    loader = SegmentationLoader(train, batch_size, TrainTransform(crop_size=crop_size, scale_range=(0.75, 1.25)), shuffle=True, seed=seed)
    model = CamBaseline(train.num_classes - 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    deadline = time.perf_counter() + 60 * minutes
    epochs = 0

    class Budget(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() > deadline:
                self.model.stop_training = True

    start = time.perf_counter()
    while time.perf_counter() < deadline:
        history = model.fit(loader, epochs=1, verbose=0, callbacks=[Budget()])
        epochs += 1
    train_time = time.perf_counter() - start

    val = VocDataset(data, split)
    sweep = ThresholdSweep(val.num_classes, class_names=val.class_names)
    fused = MultiScaleCams(model, scales=(1.0, 0.5, 1.5))  # compiled once, not op by op
    correct = 0
    for index in range(len(val)):
        image, truth = val.load_item(index)
        normalised, _, _ = EvalTransform()(None, image)
        present = np.flatnonzero(val.labels[index])
        logits = keras.ops.convert_to_numpy(model(normalised[None], training=False))[0]
        correct += np.array_equal(logits > 0, val.labels[index] > 0)
        cams = np.asarray(fused.predict_on_batch(normalised[None]))[0]
        sweep.update(cams[..., present], present + 1, truth)
    threshold, scores = sweep.best()
    return {
        "seed": seed, "epochs": epochs, "train_s": train_time, "loss": history.history["loss"][-1],
        "exact_label_accuracy": correct / len(val), "threshold": threshold, "scores": scores,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--data", default=None, help="synthetic data folder (default: generate the defaults)")
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        data = args.data
        if data is None:
            from wsss_keras.data.synthetic import generate

            data = os.path.join(folder, "synth")
            generate(data)
        results = [train_and_score(data, int(seed), args.minutes, args.crop_size, args.batch_size) for seed in args.seeds.split(",")]
    import keras

    print(f"plain CNN CAM network, backend {keras.backend.backend()}, {args.minutes} min per seed")
    for result in results:
        print(f"seed {result['seed']}: {result['epochs']} epochs, loss {result['loss']:.3f}, exact-label accuracy {100 * result['exact_label_accuracy']:.1f}%, "
              f"CAM mIoU {100 * result['scores'].miou:.1f} at background threshold {result['threshold']:.2f}")
    mious = np.array([100 * r["scores"].miou for r in results])
    print(f"CAM mIoU over {len(results)} seed(s): {mious.mean():.1f} ± {mious.std():.1f}")
    print(results[-1]["scores"].table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
