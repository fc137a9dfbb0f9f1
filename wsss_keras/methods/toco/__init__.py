"""ToCo (Ru et al., CVPR 2023, "Token Contrast for Weakly-Supervised Semantic Segmentation"):
the single-stage ViT host of DOEI.

A ViT (optionally behind a convolutional stem) gives
- image logits from the global max pool of the final patch tokens and a bias-free linear
  classifier, whose response map is the CAM;
- auxiliary logits and CAM from the un-normalised tokens of an intermediate block (`aux_layer`);
- segmentation logits from a LargeFOV head on the final patch tokens.

Training (`compute_loss`, so `fit` works on every backend) follows the reference code
(rulixiang/ToCo `scripts/dist_train_voc_seg_neg.py`, spec methods/doei.md §2.1 and §3.1):
online multi-scale + flip CAMs, two-threshold PAR-refined pseudo-labels for the balanced
segmentation loss, the dense-energy regulariser, patch token contrast (PTC) on the final
tokens with targets from the auxiliary CAM, and class token contrast (CTC) between global
views and local crops cut around uncertain regions, with an EMA projection head as teacher.
Every loss weight, start step and threshold is in `losses` (defaults: ToCo's VOC script).

Where this differs from the reference, on purpose:
- The crop box is recorded after every flip (the reference records it before its last flip,
  so half its boxes are mirrored).
- PTC's crop box: "reference" (default) passes image-pixel box coordinates to the token grid
  as the code does (so padded crops ignore most PTC pairs); "scaled" scales them to the grid.
- The dense-energy kernel is exact on a coarser grid instead of a permutohedral lattice
  (see `ops.losses.dense_energy_loss`).
- The CTC loss is written with log-sum-exp (same value, no overflow).
- The student projection of the two global views reuses the class tokens of the main forward
  and of the second view (the reference runs both views through the encoder again; without
  dropout the values are the same).

The local crops are cut from the loader's `local_source`, which the reference flips independently
of the main input whose CAMs place them; `[train] augment.local_crops_follow_flip = true`
(`ToCoTrainTransform`) makes it follow the main input's flip. Only training steps move the EMA
teacher, the step counter and the crop sampler's seed; `evaluate` leaves them as they were.

DOEI (`wsss_keras.methods.doei.DOEI`) plugs in through the encoder's attention hook: pass
`doei=DOEI(...)` and it runs in every forward pass (CAMs, segmentation, and the CTC crop passes
unless `doei.in_crop_passes` is False).

The package, one file per part: `losses` (the loss settings), `layers` (the LargeFOV and
projection heads), `crops` (local crops for CTC), `model` (`ToCo`).
"""

from wsss_keras.methods.toco.crops import (
    gather_square_crops,
    sample_local_crops,
    uncertainty_roi,
)
from wsss_keras.methods.toco.layers import LargeFOV, ProjectionHead
from wsss_keras.methods.toco.losses import TOCO_LOSS_DEFAULTS, toco_losses
from wsss_keras.methods.toco.model import ToCo

__all__ = [
    "TOCO_LOSS_DEFAULTS", "toco_losses", "LargeFOV", "ProjectionHead", "gather_square_crops",
    "sample_local_crops", "uncertainty_roi", "ToCo",
]
