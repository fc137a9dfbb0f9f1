"""Everything a method counts in steps, at the papers' values: one table, read three ways.

The pipelines take a stage's default length and warm-up from here, the methods their
step-counted knobs (ToCo's loss start steps, SSR's prototype refresh and CMPA warm-up), and
`wsss_keras.recipes.with_steps` (`--steps`) scales all of them with the run's length, so a
default cannot change in one place and not the other. Keras-free: the recipe checks read it
without importing a backend.

`STEP_COUNTS[method]`: {table trained: {table holding the count: {key: default, or None where
an absent key is not a step count}}}.
"""

# ToCo (scripts/dist_train_voc_seg_neg.py, model/losses.py): a term is active from its 0-based
# `*_start` step; the reference adds seg and reg when `n_iter > 2000`, i.e. from step 2001.
TOCO_LOSS_STARTS = {"seg_start": 2001, "reg_start": 2001, "ptc_start": 0, "ctc_start": 0, "aux_pseudo_labels_until": 0}
# SSR (methods/ssr.md): image prototypes refreshed every 5,000 steps [PAPER]; Grad-CAM in CLIP's
# space for the first 500 steps while the CMPA heads learn [INTERP].
SSR_STEP_KNOBS = {"prototype_refresh": 5000, "cmpa_warmup_steps": 500}
PERIODS = {"prototype_refresh"}  # every N steps: scaled, at least 1

# The stages every method with IRN and a segmentation network shares.
IRN_STEPS = 1983
SEGMENTATION_STEPS = 20000

_SCHEDULE = {"steps": None, "warmup_steps": 0}
_IRN_SCHEDULES = {
    "irn": {"irn": {**_SCHEDULE, "steps": IRN_STEPS}},
    "segmentation": {"segmentation": {**_SCHEDULE, "steps": SEGMENTATION_STEPS}},
    # The optional compact student (`[student]`), trained as long as the segmentation network.
    "student": {"student": {**_SCHEDULE, "steps": SEGMENTATION_STEPS}},
}
_CLIP_SCHEDULES = {  # WeCLIP's, which SSR keeps
    "clip": {"clip": {"steps": 1000, "warmup_steps": 30}},  # trained only with [clip] source = "train"
    "train": {"train": {"steps": 30000, "warmup_steps": 50}},
    **_IRN_SCHEDULES,
}
STEP_COUNTS = {
    "toco": {
        "train": {
            "train": {"steps": 20000, "warmup_steps": 1500},
            # DOEI's schedule follows the model's max_steps, [train] steps.
            "losses": dict(TOCO_LOSS_STARTS),
        },
        **_IRN_SCHEDULES,
    },
    "amr": {
        "cam_network": {"cam_network": {**_SCHEDULE, "steps": 5288}},
        "train": {"train": {**_SCHEDULE, "steps": 5288}},
        **_IRN_SCHEDULES,
    },
    "ssc": {
        # self_modulation_start_fraction needs no scaling; an absolute self_modulation_start does.
        "train": {"train": {**_SCHEDULE, "steps": 17630}, "ssc": {"self_modulation_start": None}},
        **_IRN_SCHEDULES,
    },
    "weclip": _CLIP_SCHEDULES,
    "ssr": {
        **_CLIP_SCHEDULES,
        # The DINO-style ViT of the CPU recipe ([dino] source = "train"); DINO's warm-up was 10 epochs.
        "dino": {"dino": {"steps": 1000, "warmup_steps": 50}},
        "train": {**_CLIP_SCHEDULES["train"], "ssr": dict(SSR_STEP_KNOBS)},
    },
}


def default_steps(method, table):
    """A training table's length when its recipe does not set `steps`."""
    return STEP_COUNTS[method][table][table]["steps"]


def default_warmup(method, table):
    """A training table's warm-up steps when its recipe does not set `warmup_steps`."""
    return STEP_COUNTS[method][table][table]["warmup_steps"]
