"""WeCLIP (Zhang et al., CVPR 2024, "Frozen CLIP: A Strong Backbone for Weakly Supervised
Semantic Segmentation"): the single-stage frozen-CLIP host of SSR.

A frozen CLIP image tower gives, per image,
- the residual stream of its first L−1 blocks and their head-averaged attention (one pass);
- Grad-CAMs (CLIP-ES): block L and the head are run again from block L's `ln_1` output, the
  image embedding is the mean of the projected patch tokens, and the target is the softmax of
  `logit_scale · cos(image, text)` over the present classes' prompts and the background
  prompts; the gradient flows through block L's attention branch only;
- a transition matrix from the mean attention of the last `affinity_layers` blocks, Sinkhorn
  normalised, symmetrised and squared, which propagates each class's CAM inside a mask (the
  CAM's boxes, `scoremap2bbox`; SSR replaces it);
- online pseudo-labels: min-max, bilinear to the crop, background `(1 − max)^bg_power`, PAR,
  argmax; no ignore region: the crop's padding is trained on like any pixel, as WeCLIP's
  training loop does (it loads `img_box` and never reads it); `ignore_padding` masks it with
  255 from the targets' `crop_boxes` instead, as ToCo does.
A light decoder (per-layer MLPs over the L−1 layers, a 1x1 fusion, a 3-block transformer) is
the only trained part (CE on the pseudo-labels, ToCo/WeCLIP's balanced form) and the only one
used for prediction.

A method built on the host (SSR) subclasses `WeCLIP` and overrides its steps: the Grad-CAM
feature spaces (`cam_text_features`, `cam_token_features`), `transition`, `propagation_masks`
and `extra_losses` (its loss terms), which read the loader's item maps from the targets; its
training stage plugs in through `wsss_keras.pipelines.weclip.WeCLIPPlugin`. The host never
imports such a method.

Verified in WeCLIP's code (spec methods/ssr.md §2.1-2.8, [CODE-W]/[CODE-E]); differences:
- all CLIP classes' Grad-CAMs come from one backward pass over a copy of block L per class
  (same values as one pass per class); with image labels (training, CAMs, online
  pseudo-labels), one copy per labelled class of the split's busiest image instead
  (`WeCLIP.max_labels_per_image`), as the reference loops over an image's labels only: COCO's
  80 classes at batch 4 needed over 23 GB at 320 px otherwise;
- WeCLIP's RFM (decoder-affinity refinement after 15k steps) and its affinity loss are not
  built: SSR's loss does not use them (spec §2.9);
- the frozen tower runs in float32 (the reference runs fp16; ~1e-3 apart).

The package, one file per part: `options` (the settings), `decoder` (`WeCLIPDecoder`),
`model` (`WeCLIP`).
"""

from wsss_keras.methods.weclip.decoder import WeCLIPDecoder
from wsss_keras.methods.weclip.model import WeCLIP, freeze, unit_normalize
from wsss_keras.methods.weclip.options import WECLIP_DEFAULTS, weclip_options

__all__ = [
    "WECLIP_DEFAULTS", "weclip_options", "WeCLIPDecoder", "WeCLIP", "freeze", "unit_normalize",
]
