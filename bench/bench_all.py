"""Run every benchmark and write the results as one Markdown page, and into the README.

    python bench/bench_all.py [--only NAMES] [--rerun] [--results bench/results] [--keep DIR]
                              [--seeds 0,1,2,3,4] [--styles flat,photo] [--run QUICKSTART_DIR] [--readme]

Each bench writes its figures to RESULTS/<name>.json (`--json`); a quality bench runs once per
synthetic style into RESULTS/<name>@<style>.json (a <name>.json without a style field predates
the styles and is read as "flat"). A bench whose JSON is already
there is not run again unless --rerun (the quality benches take about an hour per method on a
2-core CPU; with --keep their run folders survive and an interrupted bench resumes). The page,
RESULTS/RESULTS.md, has three parts: quality per method next to its baseline (mean ± std over
seeds, per style, and the paired difference per seed with its 95 % interval and what it
supports), the training step time per backend next to plain PyTorch, and inference per runtime
(latency, size, mIoU; the HTTP server's throughput), and, when run by name (hours), the paper
recipes at full size. --readme replaces the README's part
between `<!-- bench_all:begin -->` and `<!-- bench_all:end -->` with it, so the README's results
are generated, not typed. Benches not measured yet are listed as such.
"""

import argparse
import json
import os
import subprocess
import sys

from quality_common import (
    FOUND_AT,
    KEPT_AT,
    lost_classes,
    mean_std_cell,
    paired_interval,
    verdict,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# name: (script, part, what it compares)
BENCHES = {
    "toco_doei": ("bench_toco_doei.py", "quality", "DOEI on its host ToCo (ViT)"),
    "amr": ("bench_amr.py", "quality", "AMR against the plain CAM network, through IRN"),
    "ssc": ("bench_ssc.py", "quality", "SSC against DRS alone, through IRN"),
    "ssr": ("bench_ssr.py", "quality", "SSR on its host WeCLIP (frozen tiny CLIP)"),
    "train_step": ("bench_train_step.py", "speed", "training step per backend"),
    "vit_forward": ("bench_vit_forward.py", "speed", "ViT-B/16 forward per runtime against Hugging Face"),
    "export": ("bench_export.py", "deploy", "inference per runtime"),
    "serve": ("bench_serve.py", "deploy", "the ONNX HTTP server"),
    "student": ("bench_student.py", "deploy", "compact students against their teacher"),
    "paper_scale": ("bench_paper_scale.py", "scale", "every paper recipe at full size, 2 steps, with its exports"),
}
# Run only when named in --only: hours on a 2-core CPU, and the ToCo recipes need the machine alone.
LONG = {"paper_scale"}
BEGIN, END = "<!-- bench_all:begin -->", "<!-- bench_all:end -->"


def result_file(results, name, style=None):
    """RESULTS/<name>.json, or RESULTS/<name>@<style>.json for a quality bench's style."""
    return os.path.join(results, f"{name}.json" if style is None else f"{name}@{style}.json")


def run_bench(name, args, style=None):
    script, part, _ = BENCHES[name]
    command = [sys.executable, os.path.join(HERE, script), "--json", result_file(args.results, name, style)]
    if part == "quality":
        keep = os.path.join(args.keep, name if style is None else f"{name}@{style}") if args.keep else None
        command += ["--seeds", args.seeds] + (["--keep", keep] if keep else [])
        command += ["--data", args.data] if args.data else ["--style", style or "flat"]
    if name in ("export", "serve") and args.run:
        command += ["--run", args.run]
    if part == "scale":
        command += ["--weights", "fake", "--steps", "2", "--export"]
        command += ["--keep", os.path.join(args.keep, name)] if args.keep else []
    print(f"[bench_all] {' '.join(command)}", flush=True)
    return subprocess.run(command, cwd=ROOT).returncode


def quality_table(records):
    """One table: every quality bench's arms, the baseline first, mean ± std over seeds."""
    columns = []
    for record in records:
        for key, header in record["columns"]:
            if key not in [c[0] for c in columns]:
                columns.append((key, header))
    lines = ["| comparison | style | network | seeds | " + " | ".join(header for _, header in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    for record in records:
        for arm, label in record["labels"].items():
            rows = record["rows"].get(arm, [])
            cells = [mean_std_cell([row[key] for row in rows if key in row]) for key, _ in columns]
            lines.append(f"| {BENCHES[record['name']][2]} | {record_style(record)} | {label} | {len(rows)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_verdicts(records):
    """For each quality bench, its method (second arm) against its baseline (first arm), seed by
    seed: on how many seeds it is ahead per figure, the mean and range of the paired differences,
    and their 95 % interval (Student's t over the seeds) with what it supports: a "gain" only where
    the interval lies above zero, "worse" where it lies below, else "no measurable difference"
    (a CPU change alone moves a seed by a few points; README, "What reproduces")."""
    lines = []
    for record in records:
        arms = list(record["labels"])
        if len(arms) < 2:
            continue
        baseline, method = arms[0], arms[1]
        base_rows, method_rows = record["rows"].get(baseline, []), record["rows"].get(method, [])
        parts = []
        for key, header in record["columns"]:
            pairs = [(m[key], b[key]) for m, b in zip(method_rows, base_rows) if key in m and key in b]
            if not pairs:
                continue
            differences = [m - b for m, b in pairs]
            ahead, behind = sum(d > 0.05 for d in differences), sum(d < -0.05 for d in differences)
            spread = f"{min(differences):+.1f} to {max(differences):+.1f}"
            interval = paired_interval(differences)
            bounds = "" if interval is None else f"; 95 % interval {interval[1]:+.1f} to {interval[2]:+.1f}"
            parts.append(f"{header} ahead on {ahead}, behind on {behind} of {len(pairs)} seeds "
                         f"(mean {sum(differences) / len(pairs):+.1f}, {spread}{bounds}): {verdict(interval)}")
        if parts:
            lines.append(f"- {record['labels'][method]} vs {record['labels'][baseline]} ({record_style(record)}): "
                         + "; ".join(parts) + ".")
    return "\n".join(lines)


def lost_class_lines(records):
    """Per quality bench, style and arm: each seed's classes that the CAMs found and the run's last
    stage lost (`quality_common.lost_classes`), or that it kept them all; records from before the
    per-class figures say so."""
    lines = []
    for record in records:
        for arm, label in record["labels"].items():
            rows = record["rows"].get(arm, [])
            if not any(len(row.get("classes", {})) > 1 for row in rows):
                continue  # a single-stage arm (the plain CNN) has nothing to lose
            seeds = []
            for seed, row in enumerate(rows):
                if "classes" not in row:
                    seeds.append(f"run {seed + 1}: not recorded")
                    continue
                lost = lost_classes(row["classes"])
                if lost:
                    seeds.append(f"run {seed + 1}: " + ", ".join(
                        f"{name} (CAM {cam:.1f}, {STAGE_NAMES[last]} {value:.1f})" for name, cam, last, value in lost))
            verdict_line = "; ".join(seeds) if seeds else f"kept every class its CAMs found, on all {len(rows)} runs"
            lines.append(f"- {label} ({record_style(record)}): {verdict_line}.")
    return "\n".join(lines) or "- no per-class figures recorded yet (benches run before they were kept)."


STAGE_NAMES = {"pseudo": "pseudo-labels", "seg": "segmentation"}


def record_style(record):
    """The data style of a quality record; records from before the styles were all "flat"."""
    return record.get("style", "flat")


def provenance(record):
    """Where a record's figures come from: commit, date, cores, the load, and its note if it has one."""
    load = f", load average {record['load_at_end']:.1f} at the end" if record.get("load_at_end") is not None else ""
    note = f"; {record['note']}" if record.get("note") else ""
    return f"commit {record.get('commit') or '?'}, {record.get('date', '?')}, {record.get('cores', '?')} cores{load}{note}"


def render(results_dir):
    records, quality = {}, []
    for name in BENCHES:
        paths = [os.path.join(results_dir, f) for f in sorted(os.listdir(results_dir)) if f.startswith(f"{name}@")]
        legacy = os.path.join(results_dir, f"{name}.json")
        if os.path.isfile(legacy) and not (BENCHES[name][1] == "quality" and os.path.isfile(
                result_file(results_dir, name, "flat"))):
            paths.insert(0, legacy)
        for path in paths:
            with open(path, encoding="utf-8") as handle:
                record = {**json.load(handle), "name": name}
            records[name] = record
            if BENCHES[name][1] == "quality":
                quality.append(record)
    parts = [f"_Generated by `bench/bench_all.py` from `{os.path.relpath(results_dir, ROOT)}/*.json`; rerun it to "
             "refresh. CPU figures from this project's 2-core development machine._"]
    if quality:
        parts.append("**Quality on the synthetic data** (mIoU %, mean ± std over seeds, then each seed's figure; CAMs and pseudo-labels on "
                     "train, segmentation on val; each bench's own notes in its docstring):\n\n" + quality_table(quality))
        parts.append("**Seed by seed** (method minus baseline, same seed, same run; a difference under 0.05 "
                     "counts as a tie; a gain is claimed only where the 95 % interval of the paired "
                     "differences excludes zero):\n\n" + paired_verdicts(quality))
        parts.append(f"**Classes the CAMs found and the run lost** (CAM IoU at least {FOUND_AT:.0f}, the last "
                     f"stage's under {KEPT_AT:.0f}; issue #22 item 5):\n\n" + lost_class_lines(quality))
        parts.append("Measured: " + "; ".join(f"{r['name']} ({provenance(r)})" for r in quality) + ".")
    for name in ("train_step", "vit_forward", "export", "serve", "student", "paper_scale"):
        if name in records:
            record = records[name]
            parts.append(f"**{record['title']}** ({provenance(record)}):\n\n{record['markdown']}")
    missing = [name for name in BENCHES if name not in records]
    if missing:
        parts.append("Not measured by `bench_all.py` yet: " + ", ".join(
            f"{name} (`python bench/{BENCHES[name][0]}`)" for name in missing)
                     + "; the figures typed in the sections above stand for them until then.")
    return "\n\n".join(parts) + "\n"


def update_readme(markdown, readme=os.path.join(ROOT, "README.md")):
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme}: no {BEGIN} ... {END} markers; add them where the results belong.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{BEGIN}\n{markdown}{END}{tail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(name for name in BENCHES if name not in LONG),
                        help=f"comma-separated, of {','.join(BENCHES)} (default: all but {','.join(sorted(LONG))}, "
                        "which take hours)")
    parser.add_argument("--rerun", action="store_true", help="run benches whose JSON exists too")
    parser.add_argument("--render-only", action="store_true", help="run nothing; write the page from the JSON there is")
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--keep", default=None, help="keep the quality benches' run folders here (resumable)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--styles", default="flat",
                        help="the synthetic styles each quality bench runs on, comma-separated (flat, photo, clutter)")
    parser.add_argument("--data", default=None, help="synthetic data folder for the quality benches")
    parser.add_argument("--run", default=None, help="a quickstart folder for the export and serve benches")
    parser.add_argument("--readme", action="store_true", help="also replace the README's results part")
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {list(BENCHES)}")
    os.makedirs(args.results, exist_ok=True)
    failed = []
    if not args.render_only:
        for name in names:
            styles = [s for s in args.styles.split(",") if s] if BENCHES[name][1] == "quality" else [None]
            for style in styles:
                label = name if style is None else f"{name}@{style}"
                if os.path.isfile(result_file(args.results, name, style)) and not args.rerun:
                    print(f"[bench_all] {label}: results there; --rerun to measure again")
                    continue
                if run_bench(name, args, style) != 0:
                    failed.append(label)
    markdown = render(args.results)
    with open(os.path.join(args.results, "RESULTS.md"), "w", encoding="utf-8") as handle:
        handle.write(markdown)
    print(markdown)
    if args.readme:
        update_readme(markdown)
        print("[bench_all] README.md updated")
    if failed:
        print(f"[bench_all] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
