"""`wsss report`: a static HTML page of a run, with pictures, that opens from disk.

For sample images of the CAM split: the image, each present class's CAM over it, the
pseudo-label and the ground truth; for sample images of the prediction split: the image, the
prediction and the ground truth, with a legend of the palette's colours beside them. Then
per-class IoU bars of every scored stage, with the classes whose IoU falls below half of their
CAM IoU in a later stage marked (also printed), and the loss curves of every training log
(matplotlib PNGs). Everything lands in OUT (default
RUN/report): `index.html` and `img/`, linked relatively, so the folder can be zipped or served.
"""

import csv
import glob
import html
import json
import os

import numpy as np

from wsss_keras.errors import DataError

STAGES = (("cams", "CAMs"), ("pseudo_labels", "pseudo-labels"), ("segmentation", "segmentation"))
THUMBNAIL = 160  # pixels on the long side
# A class is marked when a later stage's IoU falls below this share of its CAM IoU: refinement
# or segmentation training lost what the CAMs had found.
DROP_SHARE = 0.5


def find_run(run_dir):
    """(the method's run folder, metrics dict, recorded dataset folder or None) for a run folder
    or a quickstart folder (whose method run is one level down)."""
    path = os.path.join(run_dir, "metrics.json")
    metrics = _read_json(path) if os.path.isfile(path) else None
    if metrics and "recipe" in metrics:
        return run_dir, metrics, metrics.get("data")
    for candidate in sorted(glob.glob(os.path.join(run_dir, "*", "metrics.json"))):
        inner = _read_json(candidate)
        if "recipe" in inner:
            return os.path.dirname(candidate), inner, inner.get("data") or (metrics or {}).get("data")
    raise DataError(f"{run_dir}: no metrics.json of a run here or one folder down; give the --out folder of "
                    "`wsss run` or `wsss quickstart` after its evaluate stage.")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable ({error}); rerun the evaluate stage.") from None


def _thumbnail(array, size=THUMBNAIL, nearest=False):
    from PIL import Image

    image = Image.fromarray(array)
    scale = size / max(image.size)
    shape = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(shape, Image.NEAREST if nearest else Image.BILINEAR)


def colorize(labels, palette):
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette[:256]
    return table[np.asarray(labels, np.uint8)]


def cam_overlay(image, cam):
    """A CAM in [0, 1] as a jet heat map over the dimmed image."""
    from matplotlib import colormaps

    heat = (colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255).astype(np.float32)
    return (0.5 * image.astype(np.float32) + 0.5 * heat).astype(np.uint8)


class ReportWriter:
    """Collects figures into `out/img` and sections of HTML."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.images = os.path.join(out_dir, "img")
        os.makedirs(self.images, exist_ok=True)
        self.sections = []

    def save(self, name, picture):
        """Save a PIL image or a matplotlib figure as img/<name>.png; returns its relative path."""
        path = os.path.join(self.images, f"{name}.png")
        if hasattr(picture, "savefig"):
            picture.savefig(path, dpi=100, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(picture)
        else:
            picture.save(path)
        return f"img/{name}.png"

    def figure(self, name, picture, caption):
        return (f'<figure><img src="{self.save(name, picture)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def iou_drops(metrics, class_names, share=DROP_SHARE):
    """[(class, stage label, stage IoU, CAM IoU)] for each class whose IoU in a stage after the
    CAMs is below `share` of its CAM IoU (classes without an IoU in either are skipped)."""
    if "cams" not in metrics:
        return []
    drops = []
    for name in class_names:
        cam = metrics["cams"]["iou"].get(name)
        if cam is None or cam <= 0:
            continue
        for key, label in STAGES[1:]:
            value = metrics.get(key, {}).get("iou", {}).get(name)
            if value is not None and value < share * cam:
                drops.append((name, label, value, cam))
    return drops


def legend(values, palette, class_names):
    """HTML swatches with the colour and name of each label value in `values` (255: ignore)."""
    table = np.zeros((256, 3), np.uint8)
    table[: len(palette)] = palette[:256]
    entries = []
    for value in sorted(values):
        name = "ignore" if value == 255 else class_names[value] if value < len(class_names) else f"label {value}"
        r, g, b = (int(c) for c in table[value])
        entries.append(f'<li data-label="{value}"><span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
                       f"{value} {html.escape(name)}</li>")
    return f'<aside class="legend"><h3>Colours</h3><ul>{"".join(entries)}</ul></aside>'


def iou_bars(metrics, class_names, marked=()):
    """One horizontal bar chart: each class's IoU in every scored stage; the `marked` classes'
    names in red with a "!"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(key, label) for key, label in STAGES if key in metrics]
    figure, axis = plt.subplots(figsize=(7, 0.45 * len(class_names) * max(1, len(stages)) / 2 + 1.5))
    height = 0.8 / max(1, len(stages))
    positions = np.arange(len(class_names))
    for offset, (key, label) in enumerate(stages):
        # Classes absent from both prediction and truth have no IoU (None): no bar.
        ious = [100 * value if value is not None else np.nan
                for value in (metrics[key]["iou"].get(name) for name in class_names)]
        axis.barh(positions + offset * height, ious, height,
                  label=f"{label} ({metrics[key]['split']}, mIoU {100 * metrics[key]['miou']:.1f})")
    axis.set_yticks(positions + height * (len(stages) - 1) / 2, [f"! {name}" if name in marked else name for name in class_names])
    for tick, name in zip(axis.get_yticklabels(), class_names):
        if name in marked:
            tick.set_color("#c00")
    axis.invert_yaxis()
    axis.set_xlim(0, 100)
    axis.set_xlabel("IoU (%)")
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(axis="x", alpha=0.3)
    return figure


def read_log(path):
    """(x name, x values, {loss name: values}) of a training log CSV (step rows, or the older
    epoch rows)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    x_name = "step" if "step" in rows[0] else "epoch"
    series = {}
    for key in rows[0]:
        if key in (x_name, "seconds", "learning_rate") or key.startswith("val_"):
            continue
        values = []
        for row in rows:
            try:
                values.append(float(row[key]))
            except (TypeError, ValueError):
                values.append(np.nan)
        if not all(np.isnan(values)):
            series[key] = values
    return x_name, [float(row[x_name]) for row in rows], series


def loss_curves(log):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, xs, series = log
    figure, axis = plt.subplots(figsize=(7, 3.2))
    for key, values in sorted(series.items()):
        axis.plot(xs, values, label=key, linewidth=2 if key == "loss" else 1)
    axis.set_xlabel(x_name)
    axis.set_ylabel("loss (mean over the logged steps)" if x_name == "step" else "loss (epoch mean)")
    axis.legend(fontsize=8, ncol=3)
    axis.grid(alpha=0.3)
    return figure


# Checked by the page itself when it loads, and read back by the tests through headless Chromium.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); });
  document.body.setAttribute("data-images-loaded", (images.length - broken.length) + "/" + images.length);
  if (broken.length) {
    var note = document.createElement("p");
    note.className = "warning";
    note.textContent = broken.length + " picture(s) failed to load: " +
      broken.map(function (image) { return image.getAttribute("src"); }).join(", ");
    document.body.insertBefore(note, document.body.firstChild);
  }
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table.metrics td, table.metrics th { padding: 0.3em 1em; text-align: right; border-bottom: 1px solid #ddd; }
.row { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 14px; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; max-width: 160px; }
.warning { background: #fdd; padding: 0.5em; }
.samples { display: flex; gap: 16px; align-items: flex-start; }
.legend { position: sticky; top: 1em; font-size: 12px; min-width: 130px; }
.legend ul { list-style: none; padding: 0; margin: 0; }
.legend li { margin: 2px 0; white-space: nowrap; }
.swatch { display: inline-block; width: 14px; height: 14px; margin-right: 6px; vertical-align: middle; border: 1px solid #999; }
.badge { background: #c00; color: #fff; border-radius: 3px; padding: 0 0.4em; font-size: 12px; }
</style>"""


def build_report(run_dir, data_dir=None, out_dir=None, samples=6, echo=print):
    """Write the report of `run_dir`; returns the path of its index.html."""
    from wsss_keras.data.imageio import read_label_map, voc_palette
    from wsss_keras.data.layouts import open_dataset
    from wsss_keras.evaluation.cams import load_cams

    method_dir, metrics, recorded_data = find_run(run_dir)
    data_dir = data_dir or recorded_data
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"{run_dir}: the run does not say where its dataset is ({data_dir or 'not recorded'}); pass "
                        "--data DIR, the dataset folder the run used.")
    out_dir = out_dir or os.path.join(run_dir, "report")
    writer = ReportWriter(out_dir)
    body = [f"<h1>{html.escape(metrics.get('recipe', 'run'))}</h1>",
            (f"<p>Run folder <code>{html.escape(os.path.abspath(method_dir))}</code>, dataset "
             f"<code>{html.escape(os.path.abspath(data_dir))}</code>.</p>")]
    scored = [(key, label) for key, label in STAGES if key in metrics]
    if scored:
        rows = "".join(f"<tr><td>{label}</td><td>{metrics[key]['split']}</td><td>{metrics[key]['images']}</td>"
                       f"<td>{100 * metrics[key]['miou']:.1f}</td></tr>" for key, label in scored)
        body.append("<h2>Scores</h2><table class=\"metrics\"><tr><th>stage</th><th>split</th><th>images</th>"
                    f"<th>mIoU (%)</th></tr>{rows}</table>")

    # All 256 entries, so the ignore band (255) shows in VOC's colour, not as background black.
    palette = voc_palette(256)

    def sample_rows(split, kinds):
        dataset = open_dataset(data_dir, split)
        rows, shown, seen = [], 0, set()
        for index, name in enumerate(dataset.names):
            if shown >= samples:
                break
            paths = {kind: os.path.join(method_dir, folder, name + suffix) for kind, (folder, suffix) in kinds.items()}
            if not all(os.path.isfile(path) for path in paths.values()):
                continue
            shown += 1
            image = dataset.load_image(index)
            present = [dataset.class_names[c + 1] for c in np.flatnonzero(dataset.labels[index])]
            cells = [writer.figure(f"{split}_{name}_image", _thumbnail(image), f"{name}: {', '.join(present)}")]
            if "cams" in paths:
                cams, classes = load_cams(paths["cams"])
                for channel, klass in enumerate(classes):
                    overlay = cam_overlay(image, _fit(cams[..., channel], image.shape[:2]))
                    cells.append(writer.figure(f"{split}_{name}_cam{klass}", _thumbnail(overlay),
                                               f"CAM: {dataset.class_names[klass]}"))
            for kind, caption in (("pseudo_labels", "pseudo-label"), ("predictions", "prediction")):
                if kind in paths:
                    labels = read_label_map(paths[kind])
                    seen.update(np.unique(labels).tolist())
                    cells.append(writer.figure(f"{split}_{name}_{kind}", _thumbnail(colorize(labels, palette), nearest=True),
                                               caption))
            truth = dataset.label_map_paths[index] if dataset.has_label_maps else None
            if truth:
                labels = read_label_map(truth)
                seen.update(np.unique(labels).tolist())
                cells.append(writer.figure(f"{split}_{name}_truth", _thumbnail(colorize(labels, palette), nearest=True),
                                           "ground truth"))
            rows.append(f'<div class="row">{"".join(cells)}</div>')
        # The legend lists the values the shown label maps hold (COCO's 81 would bury them).
        if rows and seen:
            rows = [f'<div class="samples"><div>{"".join(rows)}</div>{legend(seen, palette, dataset.class_names)}</div>']
        return rows, dataset

    class_names = None
    cam_split = metrics.get("cams", metrics.get("pseudo_labels", {})).get("split", "train")
    kinds = {key: value for key, value in (("cams", ("cams", ".npz")), ("pseudo_labels", ("pseudo_labels", ".png")))
             if os.path.isdir(os.path.join(method_dir, value[0]))}
    if kinds:
        rows, dataset = sample_rows(cam_split, kinds)
        class_names = dataset.class_names
        body.append(f"<h2>CAMs and pseudo-labels ({html.escape(cam_split)})</h2>" + "".join(rows))
    if os.path.isdir(os.path.join(method_dir, "predictions")):
        split = metrics.get("segmentation", {}).get("split", "val")
        rows, dataset = sample_rows(split, {"predictions": ("predictions", ".png")})
        class_names = class_names or dataset.class_names
        body.append(f"<h2>Predictions ({html.escape(split)})</h2>" + "".join(rows))
    if scored and class_names:
        drops = iou_drops(metrics, class_names)
        marks = "".join(
            f'<p class="warning drop" data-class="{html.escape(name)}"><span class="badge">IoU drop</span> '
            f"{html.escape(name)}: {label} IoU {100 * value:.1f} % is below half of its CAM IoU {100 * cam:.1f} %</p>"
            for name, label, value, cam in drops)
        for name, label, value, cam in drops:
            echo(f"[report] warning: {name}: {label} IoU {100 * value:.1f} % < half of its CAM IoU {100 * cam:.1f} %")
        body.append("<h2>Per-class IoU</h2>" + marks + writer.figure(
            "iou", iou_bars(metrics, class_names, {name for name, *_ in drops}), "IoU per class and stage"))
    logs = sorted(glob.glob(os.path.join(method_dir, "*_log.csv")))
    curves = [(path, read_log(path)) for path in logs]
    curves = [(path, log) for path, log in curves if log and log[2]]
    if curves:
        body.append("<h2>Training losses</h2>" + "".join(
            writer.figure(f"loss_{os.path.basename(path)[:-8]}", loss_curves(log), os.path.basename(path))
            for path, log in curves))
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(metrics.get('recipe', 'run'))}"
            f" report</title>{STYLE}</head><body>{''.join(body)}{IMAGE_CHECK}</body></html>")
    path = os.path.join(out_dir, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    echo(f"[report] wrote {path} ({len(os.listdir(writer.images))} pictures)")
    return path


def _fit(cam, shape):
    """A CAM resized to the image's size if it is not already (CAM files are at image size)."""
    if cam.shape == tuple(shape):
        return cam
    import cv2

    return cv2.resize(cam.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
