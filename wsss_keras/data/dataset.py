"""The dataset index shared by every layout: image paths, label-map paths, image-level labels.

A `SegmentationDataset` knows where each file is and which classes each image contains. It
reads files on request (`load_image`, `load_label_map`) and can check them all up front
(`check`). The layouts (`VocDataset`, `CocoDataset`) only decide how the index is built.
"""

import io
import os
import pickle

import numpy as np

from wsss_keras.data.classes import CLASS_NAMES_FILE, read_class_names
from wsss_keras.data.imageio import IGNORE_INDEX, read_image, read_label_map
from wsss_keras.errors import DataError


class SegmentationDataset:
    """Images with image-level labels and, where present, pixel label maps.

    Args:
        names: image ids, in split-file order.
        image_paths: one image file per name.
        label_map_paths: one label PNG per name, or None for names without one.
        class_names: background first, then the classes of the image-level labels.
        labels: multi-hot array (N, num_classes - 1) of the foreground classes present.
        description: a short text naming the layout, root and split, used in messages.
    """

    def __init__(self, names, image_paths, label_map_paths, class_names, labels, description):
        if not names:
            raise DataError(f"{description}: the split lists no images; add image ids to the split file.")
        self.names = list(names)
        self.image_paths = list(image_paths)
        self.label_map_paths = list(label_map_paths)
        self.class_names = tuple(class_names)
        self.labels = np.asarray(labels, dtype=np.float32).reshape(len(self.names), self.num_classes - 1)
        self.description = description

    @property
    def num_classes(self):
        """Number of classes including background (the size of the label maps' index space)."""
        return len(self.class_names)

    @property
    def max_labels_per_image(self):
        """The most foreground classes one image of the split has (at least 1)."""
        return max(int(self.labels.sum(axis=1).max()), 1) if len(self.labels) else 1

    @property
    def has_label_maps(self):
        return all(path is not None for path in self.label_map_paths)

    def __len__(self):
        return len(self.names)

    def __repr__(self):
        return f"<{type(self).__name__} {self.description}: {len(self)} images, {self.num_classes} classes>"

    def load_image(self, index):
        """RGB uint8 image (H, W, 3) of item `index`."""
        return read_image(self.image_paths[index])

    def load_label_map(self, index):
        """uint8 label map (H, W) of item `index`, checked against the class list."""
        path = self.label_map_paths[index]
        if path is None:
            raise DataError(
                f"{self.description}: image {self.names[index]!r} has no label map; pixel labels are "
                "needed here (evaluation), so add its PNG or evaluate on a split that has them."
            )
        return read_label_map(path, self.num_classes)

    def load_item(self, index, with_label_map=True):
        """(image, label map or None) with matching sizes."""
        image = self.load_image(index)
        if not with_label_map:
            return image, None
        label_map = self.load_label_map(index)
        if label_map.shape != image.shape[:2]:
            raise DataError(
                f"{self.label_map_paths[index]}: label map is {label_map.shape[1]}x{label_map.shape[0]} "
                f"but its image {self.image_paths[index]} is {image.shape[1]}x{image.shape[0]}; "
                "they must have the same size."
            )
        return image, label_map

    def with_label_maps_from(self, folder, what="label maps", made_by=None):
        """The same images and image-level labels, with label maps read from `folder/<name>.png`.

        Multi-stage methods train their IRN and segmentation networks on label maps they made
        themselves (IR labels, pseudo-labels); this view points the loader at them. Every name
        must have its PNG: a partial folder would silently train on fewer images.

        Args:
            folder: the folder of `<name>.png` label maps.
            what: what the folder holds, for messages ("pseudo-labels").
            made_by: the command or stage that writes them, for messages.
        """
        paths = [os.path.join(folder, f"{name}.png") for name in self.names]
        missing = [path for path in paths if not os.path.isfile(path)]
        if missing:
            fix = f"; run {made_by} first" if made_by else ""
            raise DataError(
                f"{folder}: {len(missing)} of {len(paths)} {what} for {self.description} are missing "
                f"(first: {os.path.basename(missing[0])}){fix}."
            )
        return SegmentationDataset(
            self.names, self.image_paths, paths, self.class_names, self.labels, f"{self.description}, {what} from {folder}"
        )

    def check(self, with_label_maps=None, progress=None):
        """Read every file and return the list of error messages (empty when all is well).

        Args:
            with_label_maps: also read label maps; default: when every item has one.
            progress: optional callable(done, total) called after each item.
        """
        with_label_maps = self.has_label_maps if with_label_maps is None else with_label_maps
        errors = []
        for index in range(len(self)):
            try:
                self.load_item(index, with_label_map=with_label_maps)
            except DataError as error:
                errors.append(str(error))
            if progress is not None:
                progress(index + 1, len(self))
        return errors

    def statistics(self, with_label_maps=True, max_items=None):
        """Counts a user wants before training: images, labels per class, co-occurrence, pixel shares.

        Returns a dict with `images`, `labels_per_image`, `images_per_class`,
        `cooccurrence` (C-1 x C-1 image counts) and, when label maps are read,
        `pixel_fraction` per class (background first) and `ignore_fraction`.
        """
        foreground = self.class_names[1:]
        stats = {
            "images": len(self),
            "labels_per_image": float(self.labels.sum(1).mean()),
            "images_per_class": {name: int(n) for name, n in zip(foreground, self.labels.sum(0))},
            "cooccurrence": (self.labels.T @ self.labels).astype(int).tolist(),
        }
        if with_label_maps and self.has_label_maps:
            count = len(self) if max_items is None else min(max_items, len(self))
            pixels = np.zeros(self.num_classes + 1, dtype=np.int64)
            for index in range(count):
                label_map = self.load_label_map(index)
                values = np.where(label_map == IGNORE_INDEX, self.num_classes, label_map)
                pixels += np.bincount(values.ravel(), minlength=self.num_classes + 1)
            total = max(int(pixels.sum()), 1)
            stats["pixel_fraction"] = {
                name: float(n) / total for name, n in zip(self.class_names, pixels[:-1])
            }
            stats["ignore_fraction"] = float(pixels[-1]) / total
        return stats


def format_statistics(dataset, statistics):
    """Human-readable statistics of a dataset split."""
    lines = [f"{dataset}", f"  labels per image: {statistics['labels_per_image']:.2f}", "  class        images  pixels"]
    pixels = statistics.get("pixel_fraction", {})
    for name in dataset.class_names:
        count = statistics["images_per_class"].get(name, "")
        share = f"{100 * pixels[name]:6.2f}%" if name in pixels else ""
        lines.append(f"  {name:<12} {count!s:>6}  {share}")
    if "ignore_fraction" in statistics:
        lines.append(f"  {'ignore (255)':<12} {'':>6}  {100 * statistics['ignore_fraction']:6.2f}%")
    return "\n".join(lines)


def labels_from_label_maps(label_map_paths, num_classes, description):
    """Image-level labels read off the label maps: a class is present if any pixel has it."""
    labels = np.zeros((len(label_map_paths), num_classes - 1), dtype=np.float32)
    for row, path in enumerate(label_map_paths):
        if path is None:
            raise DataError(f"{description}: labels were asked from label maps, but one is missing for item {row}.")
        present = np.unique(read_label_map(path, num_classes))
        present = present[(present > 0) & (present != IGNORE_INDEX)]
        labels[row, present - 1] = 1.0
    return labels


def labels_from_cls_file(path, names, num_classes):
    """Image-level labels from a `cls_labels.npy` dictionary.

    Two key styles are used in WSSS code: the image id as a string ("2007_000032", ToCo) and
    the id with underscores removed as an int (2007000032, IRN). Values are multi-hot vectors
    over the foreground classes, or over all classes with background first.
    """
    table = read_cls_label_table(path)
    labels = np.zeros((len(names), num_classes - 1), dtype=np.float32)
    for row, name in enumerate(names):
        vector = table.get(name)
        if vector is None and name.replace("_", "").isdigit():
            vector = table.get(int(name.replace("_", "")))
        if vector is None:
            raise DataError(f"{path}: no entry for image {name!r}; add it or remove the image from the split file.")
        try:
            vector = np.asarray(vector, dtype=np.float32).ravel()
        except (TypeError, ValueError):
            raise DataError(f"{path}: entry for {name!r} is not a vector of numbers; store a multi-hot vector.") from None
        if vector.size == num_classes:
            vector = vector[1:]
        if vector.size != num_classes - 1:
            raise DataError(
                f"{path}: entry for {name!r} has {vector.size} values; expected {num_classes - 1} "
                f"(foreground classes) or {num_classes} (with background)."
            )
        labels[row] = vector > 0
    return labels


# What unpickling a cls_labels dictionary may construct: NumPy arrays, dtypes and scalars. The
# functions are taken from NumPy's own pickles, so both spellings of their module resolve
# (numpy 1 writes numpy.core.multiarray, numpy 2 numpy._core.multiarray). Dicts, lists, str
# and int need no lookup. Anything else (os.system, builtins.eval ...) is refused unrun.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_CLS_LABEL_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
}


class _ClsLabelUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        found = _CLS_LABEL_GLOBALS.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


class _RefusedGlobal(pickle.UnpicklingError):
    pass


def read_cls_label_table(path):
    """The {image id: vector} dictionary of a `cls_labels.npy` file (ToCo's, IRN's, ours).

    `numpy.save` writes a dictionary as a pickle, and `np.load(allow_pickle=True)` would run
    whatever a crafted file asks for; this reads the .npy header itself and unpickles with an
    allow-list of the NumPy classes a dictionary of arrays needs.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: class-label file not found; pass the path of a cls_labels .npy file.")
    fix = "save a dict {image_id: multi-hot vector} with numpy.save"
    with open(path, "rb") as handle:
        data = handle.read()
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f".npy format version {version}")
        shape, _, dtype = read_header[version](stream)
    except ValueError as error:
        raise DataError(f"{path}: not a NumPy .npy file ({error}); {fix}.") from None
    if dtype != np.dtype(object) or shape != ():
        raise DataError(f"{path}: holds a {dtype} array of shape {shape}, not a dictionary; {fix}.")
    try:
        table = _ClsLabelUnpickler(stream, encoding="ASCII").load()
    except _RefusedGlobal as refused:
        raise DataError(
            f"{path}: refused: unpickling it would call {refused}, which a cls_labels dictionary never holds "
            f"(a crafted or foreign file; loading it could run code); {fix}."
        ) from None
    except Exception as error:  # truncated or damaged pickle data
        raise DataError(f"{path}: a damaged .npy file ({type(error).__name__}: {error}); copy it again or {fix}.") from None
    if isinstance(table, np.ndarray) and table.dtype == object and table.shape == ():
        table = table.item()
    if not isinstance(table, dict):
        raise DataError(f"{path}: holds a {type(table).__name__}, not a dictionary; {fix}.")
    return table


def read_split_file(path):
    """Image ids listed in a split file (first column of each non-empty line)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: split file not found; list one image id per line.")
    with open(path, encoding="utf-8") as handle:
        names = [line.split()[0] for line in handle if line.strip()]
    if not names:
        raise DataError(f"{path}: the split file is empty; list one image id per line.")
    return names


def require_files(paths, names, what, split_path):
    """Raise one message listing the ids whose file is missing (at most five shown)."""
    missing = [(name, path) for name, path in zip(names, paths) if not os.path.isfile(path)]
    if missing:
        shown = "; ".join(path for _, path in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(
            f"{split_path}: {len(missing)} listed {what} not found: {shown}{more}; "
            "add the files or remove their ids from the split file."
        )


def resolve_class_names(root, class_names, default):
    """A dataset's class names: `class_names` (a list, or a class-names file), else the
    `class_names.txt` in `root`, else `default`."""
    if class_names is None:
        path = os.path.join(root, CLASS_NAMES_FILE)
        return read_class_names(path) if os.path.isfile(path) else tuple(default)
    if isinstance(class_names, (str, os.PathLike)):
        return read_class_names(os.fspath(class_names))
    return tuple(class_names)
