"""The paper recipes at their real sizes, briefly: `wsss run RECIPE --smoke N` for each recipe and backend.

    python bench/bench_paper_scale.py [--recipes toco_doei_voc,amr_voc] [--backends torch,jax] [--steps 20]
        [--weights random] [--voc DIR] [--coco DIR] [--timeout 600] [--stages train] [--export] [--no-fit] [--json FILE]
    python bench/bench_paper_scale.py --merge A.json B.json --json FILE [--note TEXT]

--recipes takes shipped names or recipe files (one that extends a paper recipe with
`accumulate = 2`, say, where the paper's batch does not fit: the batch stays, run as
micro-batches). Each (recipe, backend) runs in its own process (a backend is chosen once per
process), on the recipe's real networks, image and crop sizes, batch sizes and losses, for N steps per training
stage on the first images of each split (`wsss_keras.pipelines.smoke`). Without --voc / --coco
it writes synthetic folders at VOC's and COCO's image sizes (`wsss data synth --size voc`,
`--layout coco`). It prints, per recipe and stage, seconds per step or per image, peak memory,
compilations after the first steps, and the projected hours of the recipe's whole schedule:
each training stage's seconds per step times its steps, each per-image stage's seconds per
image times its split's size in the real dataset (below). A run that fails or times out is
reported with its last line and the bench goes on. A training stage that runs out of memory
(the smoke run's watchdog, or the kernel's killer) is kept in the table and, unless --no-fit,
the recipe is run again from a recipe file that extends it with the `accumulate` the error names
(`<recipe>_accumulate2`, then 4, ...): the same global batch in micro-batches, which is what a
user of this machine would set.

--weights fake writes random-valued checkpoints in the released formats and names
(`fake_checkpoints.py`: timm ViT-B/16, OpenAI CLIP ViT-B/16 with its BPE file, DINO ViT-S/16,
torchvision ResNet-50/101 and VGG-19) and runs each recipe beside them, so the recipes' own
relative file names ([clip] tokenizer, [dino] weights, ...) find them and every importer runs
at full size; --weights random builds the backbones untrained instead.

With --export, each recipe's final model (the segmentation network where the method trains
one, else its model) is then exported at its real input size to ONNX float32 and TFLite float16
and int8 (`wsss export`, calibrated on the run's data, with its self-check; int8 with
`--int8-scope weights` unless --int8-scope full); the table gives
each artifact's size and label agreement with the Keras model.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from results_io import write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_RECIPES = ("toco_voc", "toco_doei_voc", "amr_voc", "ssc_voc", "weclip_voc", "ssr_voc", "toco_coco", "toco_doei_coco",
                 "amr_coco", "ssr_coco")
# The splits' sizes in the real datasets, for the projection: VOC 2012 with SBD's train_aug
# (10,582, the WSSS papers' count), COCO 2014 as the WSSS papers use it (82,081 train and 40,137
# val images with at least one labelled object, ToCo's and WeCLIP's split files).
SPLIT_SIZES = {"voc": {"train_aug": 10582, "train": 1464, "val": 1449}, "coco": {"train2014": 82081, "val2014": 40137}}


def recipe_label(recipe):
    """A shipped recipe's name, or a recipe file's name without its folder and `.toml`."""
    return os.path.splitext(os.path.basename(recipe))[0]


def dataset_kind(recipe):
    """"coco" when any of the recipe's tables reads a COCO split, else "voc" (a recipe file of
    one's own that extends a COCO recipe is COCO too)."""
    from wsss_keras.recipes import load_recipe

    splits = {table.get("split") for table in load_recipe(recipe).values() if isinstance(table, dict)}
    return "coco" if splits & set(SPLIT_SIZES["coco"]) else "voc"


def synthetic_folders(root, kinds):
    """Synthetic VOC and COCO folders at the real datasets' image sizes, written once into `root`."""
    folders = {}
    for kind in kinds:
        folder = os.path.join(root, f"synthetic_{kind}")
        if not os.path.isdir(folder):
            layout = ["--layout", "coco"] if kind == "coco" else []
            subprocess.run([sys.executable, "-m", "wsss_keras.cli", "data", "synth", folder, "--size", kind,
                            "--n-train", "40", "--n-val", "20", *layout], check=True, cwd=ROOT)
        folders[kind] = folder
    return folders


def projected_hours(rows, kind):
    """Hours of the recipe's whole schedule at the measured rates of the stages that have one."""
    seconds = 0.0
    for row in rows:
        rate = row.get("per_unit")
        if row.get("unit") == "s/step" and rate:
            seconds += rate * row["full_steps"]
        elif row.get("unit") == "s/image" and rate:
            seconds += rate * SPLIT_SIZES[kind].get(row.get("split"), 0)
    return seconds / 3600.0


def stages_of(recipe, stages):
    """The asked stages that the recipe's method runs, as `--stages` takes them (None: all)."""
    if not stages:
        return None
    from wsss_keras.pipelines.run import METHOD_STAGES
    from wsss_keras.recipes import load_recipe

    own = METHOD_STAGES[load_recipe(recipe)["recipe"]["method"]]
    return ",".join(stage for stage in stages.split(",") if stage in own)


# The checkpoint `--weights` names per method when the bench runs on fake checkpoints.
FAKE_MAIN_WEIGHTS = {"toco": "vit_base_patch16_224.orig_in21k_ft_in1k.safetensors", "amr": "resnet50-19c8e357.pth",
                     "ssc": "resnet50-19c8e357.pth", "weclip": "ViT-B-16.pt", "ssr": "ViT-B-16.pt"}


def fake_weights(root):
    """The folder of fake checkpoints, written once."""
    folder = os.path.join(root, "fake_checkpoints")
    if not os.path.isfile(os.path.join(folder, "ViT-B-16.pt")):
        subprocess.run([sys.executable, os.path.join(ROOT, "bench", "fake_checkpoints.py"), folder, "--clip-fp16"],
                       check=True)
    return folder


def run_one(recipe, backend, kind, data, out, steps, weights, stages, timeout, log_dir):
    command = [sys.executable, "-m", "wsss_keras.cli", "--backend", backend, "run", recipe, "--data", data,
               "--out", out, "--smoke", str(steps)]
    cwd = ROOT
    if weights and os.path.isdir(weights):  # a fake-checkpoint folder: the recipe's relative names resolve there
        from wsss_keras.recipes import load_recipe

        cwd, weights = weights, os.path.join(weights, FAKE_MAIN_WEIGHTS[load_recipe(recipe)["recipe"]["method"]])
    if weights:
        command += ["--weights", weights]
    if stages:
        command += ["--stages", stages]
    log_path = os.path.join(log_dir, f"{recipe_label(recipe)}_{backend}.log")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            done = subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1",
                                       "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))})
            status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
    with open(log_path, encoding="utf-8", errors="replace") as log:
        lines = [line.rstrip() for line in log if line.strip()]
    record = {"recipe": recipe_label(recipe), "dataset": kind, "backend": backend, "status": status,
              "seconds": round(time.perf_counter() - started, 1)}
    if status == "exit -9":  # SIGKILL: on this machine, the kernel's out-of-memory killer
        stage = next((line[1:].split("]")[0] for line in reversed(lines)
                      if line.startswith("[") and not line.startswith("[smoke]")), None)
        from wsss_keras.pipelines.smoke import training_table

        table = training_table(stage)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
        record["status"] = status = (
            f"killed in [{stage or 'a stage'}], most likely out of memory (this machine has {memory:.0f} GiB): set "
            f"[{table or 'its table'}] accumulate = 2 (or more) in a recipe that extends this one, to run its batch as "
            "smaller micro-batches")
        if table:
            record["fits_with"] = {"table": table, "accumulate": 2 * int(load_table(recipe, table).get("accumulate", 1))}
    smoke_path = os.path.join(out, "smoke.json")
    if os.path.isfile(smoke_path):
        with open(smoke_path, encoding="utf-8") as handle:
            record.update(json.load(handle))
    if status != "ok":
        errors = [line for line in lines if line.startswith(("Error", "error")) or "Error:" in line]
        record["last_line"] = (errors or lines or [""])[-1][:300]
        # The smoke run's own out-of-memory line names the table and the accumulate to try.
        suggested = re.search(r"ran out of memory at .*set \[(\w+)\] accumulate = (\d+)", record["last_line"])
        if suggested:
            record["fits_with"] = {"table": suggested[1], "accumulate": int(suggested[2])}
    return record


def load_table(recipe, table):
    from wsss_keras.recipes import load_recipe

    return load_recipe(recipe).get(table) or {}


def accumulating_recipe(recipe, table, accumulate, folder):
    """A recipe file extending `recipe` with [table] accumulate = N: the same global batch, run as N
    micro-batches; None when the batch does not split into N."""
    batch = int(load_table(recipe, table).get("batch_size") or 0)
    if not batch or batch % accumulate:
        return None
    label = f"{recipe_label(recipe)}_accumulate{accumulate}"
    path = os.path.join(folder, f"{label}.toml")
    parent = os.path.abspath(recipe) if recipe.endswith(".toml") else recipe
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"# Written by bench_paper_scale.py: {recipe_label(recipe)}'s [{table}] batch of {batch} did not fit "
                     f"this machine's memory;\n# the same batch as {accumulate} micro-batches of {batch // accumulate}.\n"
                     f"[recipe]\nextends = {json.dumps(parent)}\nname = {json.dumps(label)}\n\n"
                     f"[{table}]\naccumulate = {accumulate}\n")
    return path


EXPORTS = (("onnx", "fp32"), ("tflite", "fp16"), ("tflite", "int8"))


def export_one(record, data, out, timeout, log_dir, int8_scope="weights"):
    """Export the run's final model in each of `EXPORTS`; adds "exports" to `record`."""
    stages = [row["stage"] for row in record.get("stages", [])]
    model = os.path.join(out, "segmenter.keras" if "train_seg" in stages else "model.keras")
    record["exports"] = []
    if not os.path.isfile(model):
        return
    for fmt, precision in EXPORTS:
        folder = os.path.join(out, f"export_{fmt}_{precision}")
        command = [sys.executable, "-m", "wsss_keras.cli", "export", model, "--format", fmt, "--precision", precision,
                   "--calibration", data, "--out", folder] + (["--int8-scope", int8_scope] if precision == "int8" else [])
        log_path = os.path.join(log_dir, f"{record['recipe']}_export_{fmt}_{precision}.log")
        started = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            try:
                done = subprocess.run(command, check=False, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
                status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout} s"
        entry = {"format": fmt, "precision": precision, "status": status, "seconds": round(time.perf_counter() - started, 1),
                 **({"int8_scope": int8_scope} if precision == "int8" else {})}
        manifest_path = os.path.join(folder, "manifest.json")
        if os.path.isfile(manifest_path):
            with open(manifest_path, encoding="utf-8") as handle:
                manifest = json.load(handle)
            entry.update(bytes=manifest["artifact"]["bytes"], input=manifest["input"]["network_size"],
                         agreement=(manifest.get("check") or {}).get("label_agreement"))
        record["exports"].append(entry)


def markdown(records):
    lines = ["| recipe | backend | stage | batch | per step / image | peak host GiB | peak accel GiB | retraced | output |",
             "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        for row in record.get("stages", []):
            rate = row.get("per_unit")
            accel = row.get("accelerator_peak")
            lines.append("| {} | {} | {} | {} | {} | {:.2f} | {} | {} | {} |".format(
                record["recipe"], record["backend"], row["stage"], row.get("batch") or "",
                f"{rate:.3f} {row.get('unit')}" if rate else "", (row.get("host_peak") or 0) / 2 ** 30,
                f"{accel / 2 ** 30:.2f}" if accel else "", "" if row.get("retraced") is None else row["retraced"],
                row.get("output", "")))
        if record["status"] != "ok":
            lines.append(f"| {record['recipe']} | {record['backend']} | **{record['status']}** | | | | | | "
                         f"{record.get('last_line', '').replace('|', '/')} |")
    lines += ["", "| recipe | backend | accelerator | projected hours of the whole schedule |", "|---|---|---|---|"]
    for record in records:
        # The label of a recipe file is not a recipe name: the run recorded its dataset.
        hours = projected_hours(record.get("stages", []), record["dataset"])
        complete = record["status"] == "ok"
        # A run stopped in its first stage has no rate to project from.
        projected = "-" if not complete and not hours else f"{hours:.1f}{'' if complete else ' (stages that ran)'}"
        lines.append(f"| {record['recipe']} | {record['backend']} | {record.get('accelerator') or 'CPU'} | {projected} |")
    exports = [(record, entry) for record in records for entry in record.get("exports", [])]
    if exports:
        lines += ["", "| recipe | artifact | network input | MB | label agreement | status |", "|---|---|---|---|---|---|"]
        for record, entry in exports:
            agreement, size = entry.get("agreement"), entry.get("bytes")
            lines.append("| {} | {} {}{} | {} | {} | {} | {} |".format(
                record["recipe"], entry["format"], entry["precision"],
                f" ({entry['int8_scope']} scope)" if entry.get("int8_scope") else "", "x".join(map(str, entry.get("input") or [])) or "-",
                "-" if size is None else f"{size / 1e6:.1f}", "-" if agreement is None else f"{100 * agreement:.2f} %",
                entry["status"]))
    return "\n".join(lines)


def merge(paths, json_path, note=None):
    """One result file from several runs' (a pass split over invocations): the records in
    order, the commits they started from, and the table made again."""
    parts = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            parts.append(json.load(handle))
    records = [record for part in parts for record in part["records"]]
    commits = list(dict.fromkeys(part["commit"] for part in parts))
    table = markdown(records)
    print(table)
    write_results(json_path, "bench_paper_scale", parts[0]["title"], markdown=table, records=records,
                  steps=parts[0]["steps"], weights=parts[0]["weights"], commit=", ".join(commits),
                  load_at_end=None,  # each part's is in "parts"; the merge's own says nothing of them
                  parts=[{"commit": part["commit"], "date": part["date"], "load_at_end": part.get("load_at_end"),
                          "recipes": [record["recipe"] for record in part["records"]]} for part in parts],
                  **({"note": note} if note else {}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(PAPER_RECIPES))
    parser.add_argument("--backends", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--weights", default="random", help="`random`, `fake` (fake checkpoints in the released "
                        "formats), or a checkpoint for every recipe")
    parser.add_argument("--stages", default=None, help="comma list of stages, each recipe running those of its method "
                        "(default: all of them)")
    parser.add_argument("--voc", default=None, help="a VOC-layout folder (default: synthetic at VOC's sizes)")
    parser.add_argument("--coco", default=None, help="a COCO-layout folder (default: synthetic at COCO's sizes)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per (recipe, backend)")
    parser.add_argument("--budget", type=int, default=None, help="seconds for the whole bench: later runs get what is left")
    parser.add_argument("--export", action="store_true", help="export each final model (ONNX, TFLite fp16 and int8)")
    # "full" falls back level by level, each a quantisation-debugger pass at the real size: on
    # ViT-B/16 at 448 with fake weights (nearly tied logits) two levels took 19 and 18 minutes
    # here and agreed on 91.0 and 91.1 % of the labels. "weights" is one pass (`wsss export`).
    parser.add_argument("--int8-scope", default="weights", choices=("weights", "full"),
                        help="`wsss export --int8-scope` for the int8 artifacts")
    parser.add_argument("--fit", action=argparse.BooleanOptionalAction, default=True,
                        help="when a training stage runs out of memory, rerun the recipe with the accumulate its "
                        "error names (the same global batch in micro-batches), doubling until it fits")
    parser.add_argument("--keep", default=None, help="keep the data, runs and logs in this folder")
    parser.add_argument("--json", default=None)
    parser.add_argument("--note", default=None, help="a line on how the figures were taken, kept in the JSON")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="run nothing: write --json from these earlier runs' files, their records in order")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.json, args.note)
    from results_io import provenance

    started = provenance()  # the commit the runs start from (each run imports the code anew)
    recipes = [name.strip() for name in args.recipes.split(",") if name.strip()]
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.abspath(args.keep or scratch)
        os.makedirs(root, exist_ok=True)
        weights = fake_weights(root) if args.weights == "fake" else args.weights
        kinds = {recipe: dataset_kind(recipe) for recipe in recipes}  # each recipe file read once
        wanted = sorted(set(kinds.values()) - {kind for kind in ("voc", "coco") if getattr(args, kind)})
        folders = {**synthetic_folders(root, wanted), **{kind: os.path.abspath(getattr(args, kind)) for kind in ("voc", "coco") if getattr(args, kind)}}
        records = []
        deadline = time.monotonic() + args.budget if args.budget else None
        for backend in backends:
            for recipe in recipes:
                timeout = args.timeout
                if deadline is not None:
                    timeout = min(timeout, int(deadline - time.monotonic()))
                    if timeout < 30:
                        print(f"{recipe} on {backend}: skipped, the budget is spent", flush=True)
                        continue
                out = os.path.join(root, f"{recipe_label(recipe)}_{backend}")
                kind = kinds[recipe]
                record = run_one(recipe, backend, kind, folders[kind], out, args.steps, weights,
                                 stages_of(recipe, args.stages), timeout, root)
                print(f"{recipe} on {backend}: {record['status']} in {record['seconds']} s", flush=True)
                records.append(record)
                while args.fit and record.get("fits_with"):
                    # Out of memory: the row stays in the table; run the same global batch in micro-batches.
                    fix = record["fits_with"]
                    fitted = accumulating_recipe(recipe, fix["table"], fix["accumulate"], root)
                    if fitted is None:
                        break
                    out = os.path.join(root, f"{recipe_label(fitted)}_{backend}")
                    record = run_one(fitted, backend, kind, folders[kind], out, args.steps, weights,
                                     stages_of(recipe, args.stages), timeout, root)
                    print(f"{recipe_label(fitted)} on {backend}: {record['status']} in {record['seconds']} s", flush=True)
                    records.append(record)
                if args.export and record["status"] == "ok":
                    export_one(record, folders[kind], out, args.timeout, root, args.int8_scope)  # adds to the record
    table = markdown(records)
    print(table)
    write_results(args.json, "bench_paper_scale", f"paper recipes at full size, {args.steps} steps per training stage",
                  markdown=table, records=records, steps=args.steps, weights=args.weights, commit=started["commit"],
                  **({"note": args.note} if args.note else {}))
    # A recipe that fitted once accumulating passes; the table keeps its out-of-memory rows.
    def base(record):
        return record["recipe"].split("_accumulate")[0]

    failed = {base(record) for record in records if record["status"] != "ok"}
    passed = {base(record) for record in records if record["status"] == "ok"}
    return 0 if failed <= passed else 1


if __name__ == "__main__":
    sys.exit(main())
