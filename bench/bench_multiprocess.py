"""Training steps per second of a tiny ToCo in one process and in N processes on this machine
(`wsss launch`, 127.0.0.1), the same global batch either way; prints figures, asserts nothing.

    python bench/bench_multiprocess.py [--backend jax|tensorflow|both] [--steps 40] [--batch 8] [--nproc 2]

The figure is 1 / `seconds_per_step` of the run's train_summary.json (the median step after
the first, which holds the compilation), as `fit_steps` measures it in every run. On one
machine the processes share its cores, and each step adds an all-reduce of the gradients over
loopback TCP, so N processes are not expected to be faster here than one: this measures what
the multi-process machinery costs, not the speed-up of N machines.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, os.path.join({root!r}, "tests"))
    data, out, steps, batch, distribute = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    from wsss_keras.pipelines.fitting import fit_steps
    from wsss_keras.training.options import TrainingOptions, training_session

    with training_session(TrainingOptions(distribute=distribute, tensorboard=False, resume=False,
                                          checkpoint_every=0)):
        from helpers import tiny_toco_for_training, toco_training_loader
        fit_steps(tiny_toco_for_training(stem=False), toco_training_loader(data, batch), steps, out, "model.keras",
                  {{"recipe": {{"name": "bench"}}}}, echo=lambda line: None)
""")


def run(backend, nproc, data, out, steps, batch, worker):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("XLA_FLAGS", None)
    arguments = [data, out, str(steps), str(batch)]
    if nproc == 1:
        command = [sys.executable, worker, *arguments, "none"]
    else:
        command = [sys.executable, "-m", "wsss_keras.cli", "launch", "--nproc", str(nproc), "--backend", backend,
                   "--logs", os.path.join(out, "logs"), "--", "python", worker, *arguments, "data-parallel"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{backend}, {nproc} process(es) failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    with open(os.path.join(out, "train_summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    return 1.0 / summary["seconds_per_step"], summary["first_step_seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow", "both"), default="both")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="the global batch")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from helpers import tiny_synthetic

    backends = ("jax", "tensorflow") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory() as folder:
        data = tiny_synthetic(os.path.join(folder, "data"), n_train=16, n_val=2, size=40, classes="3")
        worker = os.path.join(folder, "worker.py")
        with open(worker, "w", encoding="utf-8") as handle:
            handle.write(WORKER.format(root=ROOT))
        print(f"tiny ToCo, global batch {args.batch}, {args.steps} steps, {os.cpu_count()} CPU cores")
        for backend in backends:
            for nproc in (1, args.nproc):
                rate, first = run(backend, nproc, data, os.path.join(folder, f"{backend}-{nproc}"), args.steps,
                                  args.batch, worker)
                print(f"{backend:10s} {nproc} process(es): {rate:6.2f} steps/s (first step {first:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
