"""SSC (Chen et al., TIP 2024): spatial structure constraints on a DRS classifier.

Spec: methods/ssc.md (verified in SSC's released code). The CAM network is IRN's ResNet-50 CAM
classifier with DRS attention expansion, constrained by two training-time modules:

- **CAM-driven reconstruction** (§2.3-2.4): `ReconstructionDecoder` rebuilds the input crop
  from the raw class-logit map P (all classes, no ReLU) and `PerceptualLoss` compares it with
  the crop on a frozen VGG-19 (relu1_1..relu5_1, weights 1/32, 1/16, 1/8, 1/4, 1). Its
  gradient flows through the decoder into P, so the CAM must keep the image's layout.
- **Activation self-modulation** (ASM, §2.5): the present classes' max-normalised CAMs are
  regressed (MSE) onto max(superpixel average, eroded reliable part), from step
  `self_modulation_start` (the code's 2 warm-up epochs of 10).
- **DRS** (§2.2, Kim et al. AAAI'21): `min(x, δ·max_hw x)` per channel, δ = 0.55, through the
  backbone's "output" hook: after every layer4 bottleneck (ReLU then clip; training and
  inference), and on the detached stage-2 output (clip without ReLU; training only).

Where we follow the code (spec §6/§8), with the paper's symbols: β_p = β_a = 1; the decoder
reads raw logits; the reconstruction target is the normalised, zero-padded crop although the
decoder ends in tanh; the max-norm denominator of ASM is not detached; erosion 8x8 with
OpenCV's anchor and border; stem and stages 1-2 frozen, BatchNorm statistics fixed. The
decoder learns with its own Adam (`decoder_optimizer`, built by the pipeline), the network
with SGD (classifier 10x).

The package, one file per part: `modulation` (DRS, the self-modulation target),
`reconstruction` (the decoder and the perceptual loss), `model` (`SSC`).
"""

from wsss_keras.methods.ssc.model import SSC
from wsss_keras.methods.ssc.modulation import (
    binary_erosion,
    drs,
    max_normalize,
    self_modulation_target,
)
from wsss_keras.methods.ssc.reconstruction import (
    DECODER_WIDTHS,
    PERCEPTUAL_WEIGHTS,
    PerceptualLoss,
    ReconstructionDecoder,
    SampleLayerNorm,
)

__all__ = [
    "binary_erosion", "drs", "max_normalize", "self_modulation_target", "DECODER_WIDTHS", "PERCEPTUAL_WEIGHTS",
    "PerceptualLoss", "ReconstructionDecoder", "SampleLayerNorm", "SSC",
]
