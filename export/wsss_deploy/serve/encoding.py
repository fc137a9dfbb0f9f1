"""What the server answers besides the PNG label map (`wsss_deploy.label_maps.label_png`): JSON
with per-class pixel counts (and COCO run-length encodings on request), or CAMs as a .npy array
or JSON."""

import io

import numpy as np

PNG = "image/png"
JSON = "application/json"
NPY = "application/x-npy"


def coco_rle(mask):
    """COCO's uncompressed RLE of a boolean (H, W) mask: column-major runs, starting with a run
    of zeros (possibly empty); `pycocotools.mask.frPyObjects` reads it."""
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return {"size": list(mask.shape), "counts": []}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = ([0] if flat[0] else []) + runs.tolist()
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def label_summary(labels, classes, rle=False):
    """{"height", "width", "classes": [{"index", "name", "pixels", "fraction"[, "rle"]}]} for
    every class present in the label map."""
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel(), minlength=len(classes))
    total = max(int(labels.size), 1)
    present = []
    for index in np.flatnonzero(counts):
        entry = {"index": int(index), "name": classes[index] if index < len(classes) else str(index),
                 "pixels": int(counts[index]), "fraction": round(float(counts[index]) / total, 6)}
        if rle:
            entry["rle"] = coco_rle(labels == index)
        present.append(entry)
    return {"height": int(labels.shape[0]), "width": int(labels.shape[1]), "classes": present}


def cams_npy(cams):
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(cams, np.float32), allow_pickle=False)
    return buffer.getvalue()


def cams_summary(cams, classes, full=False):
    """Per foreground class its peak score and where; with `full`, the maps as nested lists."""
    cams = np.asarray(cams, np.float32)
    entries = []
    for channel, name in enumerate(classes[1:]):
        plane = cams[..., channel]
        row, column = np.unravel_index(int(np.argmax(plane)), plane.shape)
        entries.append({"index": channel + 1, "name": name, "peak": round(float(plane[row, column]), 6),
                        "peak_at": [int(row), int(column)]})
    body = {"height": int(cams.shape[0]), "width": int(cams.shape[1]), "classes": entries}
    if full:
        body["cams"] = np.round(cams, 4).tolist()
    return body


def negotiate(accept, query_format, offered):
    """The media type to answer with: `?format=` wins (png/json/npy), else the first of
    `offered` that the Accept header allows (q-values honoured); None when none is acceptable."""
    by_name = {"png": PNG, "json": JSON, "npy": NPY}
    if query_format:
        chosen = by_name.get(query_format.lower())
        return chosen if chosen in offered else None
    if not accept:
        return offered[0]
    ranked = []
    for position, part in enumerate(accept.split(",")):
        fields = [field.strip() for field in part.split(";")]
        quality = 1.0
        for field in fields[1:]:
            if field.startswith("q="):
                try:
                    quality = float(field[2:])
                except ValueError:
                    quality = 0.0
        ranked.append((quality, -position, fields[0].lower()))
    for quality, _, kind in sorted(ranked, reverse=True):
        if quality <= 0:
            continue
        for media in offered:
            if kind in (media, "*/*") or (kind.endswith("/*") and media.startswith(kind[:-1])):
                return media
    return None
