"""AMR (Qin et al., AAAI 2022): a spotlight and a compensation branch, recalibrated CAMs.

Spec: methods/amr.md (verified in AMR's code). The pieces:

- `CamNetwork`: the plain CAM network (IRN/AMR's `resnet50_cam`): a ResNet (or ViT), a 1x1 classifier
  without bias, logits by global average pooling, multi-label soft-margin loss; stage A of the
  pipeline and AMR's spotlight branch.
- `AMM`: the attention modulation module, CBAM's channel-then-spatial gate whose gate values
  are the normal density of the attention logits (`gaussian_projection`) instead of a
  sigmoid: responses near the mean weigh most, extreme ones are damped (§2.5).
- `AMR`: the spotlight branch (a trained `CamNetwork`, backbone frozen) and the compensation
  branch (a ResNet with an AMM in every bottleneck), trained with
  0.5·MLSM(spotlight) + 0.5·MLSM(compensation) + 0.05·L_cps, L_cps the L1 distance of the two
  branches' ReLU'd CAMs (§3.2). Its CAM is the 0.5/0.5 mix of the branches' max-normalised CAMs.

Where we follow the released code (it differs from the paper's figure, §2.6 / §8):
- an AMM in each of the 16 bottlenecks, on the residual branch before the shortcut add (the
  figure draws three, between stages); channel gate on average pooling only, spatial gate on
  [max, mean] over channels, 7x7 conv without bias, then a normalisation on batch statistics;
- the Gaussian's mean and std are over the whole tensor (all images of the batch), the std is
  unbiased, both are constants for autodiff, no epsilon; the density is not rescaled to a peak
  of 1;
- the spatial gate's BatchNorm never leaves training mode in the reference (its `train()`
  override), so it always normalises with the statistics of the batch it sees. Its moving
  statistics are never read, so `BatchStatNorm` keeps only gamma and beta;
- in training both statistics are the whole batch's; in the reference's CAM pass the batch is
  always one image and its mirror, so there an image's gates see the statistics of that pair
  and nothing else. Our CAMs do the same (`paired` gates, `AMR.branch_cam_maps`): an image's
  CAM does not depend on the other images of a batch, in `wsss cams` and in an export alike;
- the spotlight backbone is frozen and its logits detached: its classification loss is logged
  but gives no gradient; its classifier learns through L_cps only;
- the compensation branch's stem and stage 1 (with their three AMMs, left at their
  initialisation) are frozen: the reference detaches stage 1's output;
- learning-rate groups inverted as in the reference: the compensation backbone and its AMMs
  at 10x the base rate, both classifiers at 1x.

On a ViT (spec §7, an option): a branch's features are the encoder's patch tokens on their
grid, and the compensation branch's AMMs gate each block's attention branch on that grid before
it is added to the residual stream (the analogue of gating a bottleneck's residual branch);
class tokens pass through ungated. Nothing of a ViT compensation encoder is frozen (stage 1 is
a ResNet notion), and the Gaussian statistics and batch-statistics normalisation are the same.

One deliberate difference, an option: the reference's L_cps pairs the CAM of image 0 plus the
mirrored CAM of image 1 of each (per-GPU) batch (its inference-time flip merge left in the
training forward; AMR issue #8), so only two images per device enter it. `cps_mode="per_image"`
(the default) compares each image's two CAMs over the whole batch, as the paper describes;
`cps_mode="code"` reproduces the reference.

The package, one file per part: `layers` (the AMM and its gates), `features` (ResNet and ViT
features, the ViT's AMM hook), `model` (`CamNetwork`, `AMR`).
"""

from wsss_keras.methods.amr.features import (
    TokenGridAMM,
    dense_features,
    feature_channels,
    is_vit,
)
from wsss_keras.methods.amr.layers import (
    AMM,
    BatchStatNorm,
    ChannelGate,
    SpatialGate,
    batch_moments,
    gaussian_projection,
)
from wsss_keras.methods.amr.model import AMR, CPS_MODES, CamNetwork

__all__ = [
    "AMM", "BatchStatNorm", "ChannelGate", "SpatialGate", "batch_moments", "gaussian_projection",
    "TokenGridAMM", "dense_features", "feature_channels", "is_vit", "CPS_MODES", "AMR", "CamNetwork",
]
