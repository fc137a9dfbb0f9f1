"""`wsss train-student`: a compact keras-hub segmenter trained on a finished run's pseudo-labels.

The student reads what any method's run leaves: `pseudo_labels/<id>.png` and the run's final
network (`segmenter.keras` where the method trains one, else `model.keras`), whose saved recipe
names the split the pseudo-labels cover. It reuses the segmentation stage's loader
(`segmentation.label_map_loader`: rescale, flip, crop, labels padded with 255) and the shared
training loop (`fitting.make_optimizer`, `fitting.fit_steps`), so logs, checkpoints and resuming
are the other stages'. With `kd_weight > 0` the run's final network is the teacher: its logits,
softened by `kd_temperature`, are a second target (`StudentSegmenter.compute_loss`).

The student is saved as `student_<arch>.keras` in the run folder, a `WSSSModel` that the other
commands (`predict`, `evaluate`, `report`, `export`, `serve`) take unchanged.
"""

import json
import os

from wsss_keras.errors import WSSSError
from wsss_keras.step_counts import SEGMENTATION_STEPS

# Settings of the student stage (the `[student]` table of the recipe saved in the student).
# AdamW on a poly schedule, SegFormer's optimiser; from scratch a larger rate than its 6e-5.
STUDENT_DEFAULTS = {
    "optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.01, "warmup_steps": 0, "power": 1.0,
    "batch_size": 8, "input_size": 256, "kd_weight": 0.0, "kd_temperature": 2.0,
}
TEACHER_FILES = ("segmenter.keras", "model.keras")
STUDENT_PREDICTIONS = "student_predictions"  # the recipe stage's predictions, in the run folder
DEFAULT_STUDENT_ARCH = "segformer_b0"  # `[student] arch` when a recipe's table leaves it out


def student_arch(recipe):
    """The arch of a recipe's `[student]` table (`DEFAULT_STUDENT_ARCH` when it leaves it out)."""
    return dict(recipe.get("student") or {}).get("arch", DEFAULT_STUDENT_ARCH)


def student_file(arch):
    """The file name the student of `arch` is saved as in the run folder."""
    return f"student_{arch}.keras"


def find_teacher(run_dir):
    """The run's final network: `segmenter.keras` when the method trained one, else `model.keras`.

    Raises:
        WSSSError: neither is in `run_dir` (not a finished run folder).
    """
    for name in TEACHER_FILES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    raise WSSSError(
        f"{run_dir}: no {' or '.join(TEACHER_FILES)} in it; pass a finished run folder (`wsss quickstart` or "
        "`wsss run RECIPE --out RUN_DIR`)."
    )


def check_preset(preset, arch):
    """Raise a one-line `WSSSError` unless `preset` is a local keras-hub preset folder of the
    backbone class `arch` needs (`methods.student.PRESET_BACKBONES`)."""
    from wsss_keras.methods.student import PRESET_BACKBONES

    config_path = os.path.join(preset, "config.json")
    if not os.path.isfile(config_path):
        raise WSSSError(
            f"--student-weights {preset}: no config.json in it; pass a local keras-hub preset folder "
            f"(a {PRESET_BACKBONES[arch]} saved with save_to_preset, or a downloaded preset's folder)."
        )
    with open(config_path, encoding="utf-8") as handle:
        class_name = json.load(handle).get("class_name")
    if class_name != PRESET_BACKBONES[arch]:
        fitting = [name for name, cls in PRESET_BACKBONES.items() if cls == class_name]
        hint = f"use --arch {fitting[0]}" if fitting else "pass a preset of that class"
        raise WSSSError(
            f"--student-weights {preset}: holds a keras-hub {class_name} preset, but --arch {arch} needs a "
            f"{PRESET_BACKBONES[arch]} one; {hint}, or leave --student-weights out to train from scratch."
        )


def build_student(arch, dataset, settings, preset=None, recipe=None):
    """The untrained `StudentSegmenter` of `arch` for `dataset`'s classes.

    Args:
        arch: a name in `methods.student.ARCHS`.
        dataset: the training dataset (its class names).
        settings: the `[student]` settings (`input_size`, `backbone`: config overrides,
            `projection_filters`, `head_channels`, `kd_weight`, `kd_temperature`).
        preset: a local keras-hub preset folder with ImageNet weights for the encoder.
        recipe: the recipe dict saved with the student.
    """
    from wsss_keras.methods.student import StudentSegmenter, build_network

    input_size = int(settings["input_size"])
    extra = {key: settings[key] for key in ("projection_filters", "head_channels") if key in settings}
    network = build_network(arch, dataset.num_classes, input_size, overrides=settings.get("backbone"), preset=preset,
                            **extra)
    return StudentSegmenter(
        network, dataset.num_classes, input_size, arch=arch, kd_weight=float(settings["kd_weight"]),
        kd_temperature=float(settings["kd_temperature"]), class_names=dataset.class_names, recipe=recipe,
    )


def train_student(run_dir, data_dir, arch, steps=None, student_weights=None, settings=None, echo=print):
    """Train a student of `arch` on `run_dir`'s pseudo-labels; returns the saved model's path.

    Args:
        run_dir: a finished run folder (`pseudo_labels/`, and `segmenter.keras` or `model.keras`).
        data_dir: the dataset the run was trained on.
        arch: a name in `methods.student.ARCHS`.
        steps: training steps (default `SEGMENTATION_STEPS`).
        student_weights: a local keras-hub preset folder of the arch's backbone (ImageNet);
            None trains from scratch.
        settings: `[student]` settings over `STUDENT_DEFAULTS` (`learning_rate`, `batch_size`,
            `input_size`, `kd_weight`, `kd_temperature`, `backbone` overrides, `crop_size`,
            `scale_range`, `seed`, ...).

    Raises:
        WSSSError: not a run folder, no pseudo-labels, unknown arch, wrong preset (one line each).

    Example:
    ```python
    path = train_student("runs/quickstart", "data/synthetic", "segformer_b0", steps=2000,
                         settings={"input_size": 256, "kd_weight": 0.5})
    student = load_model(path)
    ```
    """
    import keras

    from wsss_keras.data.layouts import open_split
    from wsss_keras.methods.student import ARCHS
    from wsss_keras.pipelines.fitting import fit_steps, make_optimizer
    from wsss_keras.pipelines.model_io import load_model
    from wsss_keras.pipelines.segmentation import label_map_loader

    if arch not in ARCHS:
        raise WSSSError(f"--arch {arch!r}: unknown student architecture; choose one of {', '.join(ARCHS)}.")
    if not os.path.isdir(run_dir):
        raise WSSSError(f"{run_dir}: no such run folder; pass the --out folder of a finished `wsss run` or `wsss quickstart`.")
    label_dir = os.path.join(run_dir, "pseudo_labels")
    if not os.path.isdir(label_dir) or not any(name.endswith(".png") for name in os.listdir(label_dir)):
        raise WSSSError(
            f"{run_dir}: no pseudo-labels (pseudo_labels/*.png) to train a student on; finish the run first "
            "(`wsss run RECIPE --out RUN_DIR`, or its pseudo-labels stage: `--stages pseudo_labels`)."
        )
    teacher_path = find_teacher(run_dir)
    if student_weights is not None:
        check_preset(student_weights, arch)
    settings = {**STUDENT_DEFAULTS, **dict(settings or {})}
    settings.setdefault("crop_size", settings["input_size"])
    steps = int(steps or settings.get("steps", SEGMENTATION_STEPS))
    teacher = load_model(teacher_path)
    teacher_recipe = dict(getattr(teacher, "recipe", {}) or {})
    header = dict(teacher_recipe.get("recipe") or {})
    split = (teacher_recipe.get("pseudo_labels") or {}).get("split", "train")
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, split).with_label_maps_from(label_dir, "pseudo-labels", made_by="the run's pseudo-label stage")
    # The recipe the shared loop and the student see: `[student]` holds the stage's settings;
    # `[train] crop_size` tells `wsss export` the input size the student runs at.
    recipe = {
        "recipe": {"name": f"{header.get('name', os.path.basename(os.path.normpath(run_dir)))}_student_{arch}",
                   "method": header.get("method", "student"), "path": os.path.join(run_dir, student_file(arch))},
        "student": {**settings, "arch": arch, "steps": steps, "teacher": os.path.basename(teacher_path),
                    "split": split, "weights": student_weights or "scratch"},
        "train": {"crop_size": int(settings["input_size"])},
    }
    saved = {key: (value if key != "recipe" else {k: v for k, v in value.items() if k != "path"})
             for key, value in recipe.items()}
    model = build_student(arch, dataset, settings, preset=student_weights, recipe=saved)
    if model.class_names != list(getattr(teacher, "class_names", None) or model.class_names):
        raise WSSSError(f"{teacher_path}: its classes {teacher.class_names} are not {data_dir}'s {model.class_names}; "
                        "pass the dataset the run was trained on (--data).")
    if model.kd_weight > 0.0:
        model.set_teacher(teacher)
        echo(f"[train-student] distilling from {teacher_path} (weight {model.kd_weight}, temperature {model.kd_temperature})")
    echo(f"[train-student] {arch}: {model.network.count_params():,} parameters, input {model.input_size}px, "
         f"{'ImageNet preset ' + student_weights if student_weights else 'from scratch'}")
    loader = label_map_loader(settings, dataset, seed, crop_size=settings["crop_size"], batch_size=settings["batch_size"])
    model.compile(optimizer=make_optimizer(recipe, "student", steps, model, defaults=STUDENT_DEFAULTS))
    return fit_steps(
        model, loader, steps, run_dir, student_file(arch), recipe, stage="train-student", echo=echo,
        summary={"batch_size": loader.batch_size, "images": len(dataset), "labels": label_dir, "teacher": teacher_path},
    )
