"""WeCLIP's settings: the reference's VOC values, and their overrides checked."""

from wsss_keras.ops.par import DEFAULT_DILATIONS

# WeCLIP's VOC settings (configs/voc_attn_reg.yaml, clip/clip_tool.py, WeCLIP_model/PAR.py).
WECLIP_DEFAULTS = {
    "logit_scale": 100.0,             # exp(logit_scale) of OpenAI's ViT-B/16; None = the CLIP's own
    "gradcam_softmax": "present",     # "present": present classes + background prompts (CLIP-ES);
                                      # "all": every class + background prompts
    "affinity_layers": 8,             # last k attention maps averaged
    "sinkhorn_iterations": 3,
    "box_threshold": 0.4,             # 0.7 on COCO
    "bg_power": 1.0,                  # cam_bg_thres
    "par_iterations": 20,
    "par_dilations": list(DEFAULT_DILATIONS),
    "seg_weight": 1.0,
    "ignore_padding": False,          # False: padding keeps its pseudo-label (WeCLIP's code);
                                      # True: 255 outside `crop_boxes` in the seg loss (ToCo's way)
}


def weclip_options(overrides=None, defaults=None, source="weclip"):
    """`defaults` (WeCLIP's) with `overrides`; unknown keys raise a ValueError naming them."""
    defaults = dict(WECLIP_DEFAULTS if defaults is None else defaults)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"[{source}] unknown setting(s) {unknown}; known: {sorted(defaults)}.")
    options = {**defaults, **overrides}
    if options["gradcam_softmax"] not in ("present", "all"):
        raise ValueError(f"[{source}] gradcam_softmax = {options['gradcam_softmax']!r}; choose 'present' or 'all'.")
    if int(options["affinity_layers"]) < 1:
        raise ValueError(f"[{source}] affinity_layers = {options['affinity_layers']}; give at least 1.")
    if not isinstance(options["ignore_padding"], bool):
        raise ValueError(f"[{source}] ignore_padding = {options['ignore_padding']!r}; give true or false.")
    return options
