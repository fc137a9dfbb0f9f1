"""ToCo's loss settings: the reference's VOC values, and their overrides checked."""

from wsss_keras.step_counts import TOCO_LOSS_STARTS

# ToCo's VOC settings (scripts/dist_train_voc_seg_neg.py, model/losses.py, utils/camutils.py);
# the loss start steps are in wsss_keras.step_counts, which --steps scales.
TOCO_LOSS_DEFAULTS = {
    "cls_weight": 1.0,
    "aux_weight": 1.0,
    "ptc_weight": 0.2,
    "ctc_weight": 0.5,
    "seg_weight": 0.1,
    "reg_weight": 0.05,
    **TOCO_LOSS_STARTS,
    "high_threshold": 0.7,
    "low_threshold": 0.25,
    "cam_scales": [1.0, 0.5, 1.5],
    "cam_flip": True,
    "par_down_scale": 2,
    "par_iterations": 10,
    "seg_guard_empty": True,
    "ptc_box": "reference",
    "ctc_temperature": 0.5,
    "local_crops": 8,
    "local_crop_size": 96,
    "negative_ratio": 0.2,
    "ema_momentum": 0.9,
    "reg_energy_scale": 1e-7,
    "reg_sigma_rgb": 15.0,
    "reg_sigma_xy": 100.0,
    "reg_scale": 0.5,
    "reg_max_pixels": 4096,
}


def toco_losses(overrides=None, source="losses"):
    """ToCo's loss settings with `overrides` applied; unknown keys raise a ValueError naming them."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(TOCO_LOSS_DEFAULTS))
    if unknown:
        raise ValueError(f"{source}: unknown ToCo loss setting(s) {unknown}; known: {sorted(TOCO_LOSS_DEFAULTS)}.")
    settings = {**TOCO_LOSS_DEFAULTS, **overrides}
    if settings["ptc_box"] not in ("reference", "scaled"):
        raise ValueError(f"{source}: ptc_box={settings['ptc_box']!r}; choose 'reference' or 'scaled'.")
    if not 0.0 <= settings["low_threshold"] < settings["high_threshold"] <= 1.0:
        raise ValueError(
            f"{source}: thresholds low={settings['low_threshold']} high={settings['high_threshold']} "
            "must satisfy 0 <= low < high <= 1."
        )
    settings["cam_scales"] = [float(scale) for scale in settings["cam_scales"]]
    return settings
