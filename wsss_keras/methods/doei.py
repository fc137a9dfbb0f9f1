"""DOEI: a parameter-free re-embedding of attention inside every transformer block.

"DOEI: Dual Optimization of Embedding Information for Attention-Enhanced Class Activation
Maps" (Zhu et al., arXiv:2502.15885). The paper's code is not public; what follows is the
reconstruction in the project's DOEI specification (its §2.5), and every choice the paper leaves open is
a knob of `DOEI` (spec §2.6). **The defaults are reconstructed, not the paper's numbers.**

Per forward pass (once, shared by every hooked block):

1. `S = Ê·Êᵀ`, the cosine similarity of the initial embeddings X⁰ (class and patch tokens).
2. `K_pq = exp(-‖r_p - r_q‖² / (2σ²))` over the mean colour `r_p` of each patch (average pool
   of `patch_size` pixels of the image actually fed in, in [0, 1]; floor grid), padded to
   N×N with 1 on every row and column that touches a class token.
3. The embedding-guided feature `G̃`: `ReLU(K ⊙ S)` (or `ReLU(K·S)`), row-normalised.

Per hooked block l (1-based), with C class tokens and P patches:

4. `Ā` = head-mean of the attention probabilities (or each head on its own).
5. `Â = (Ā + λ·G̃) / (1 + λ)`.
6. `M_c = Â[:C, :C] + Â[:C, :C]ᵀ` (C×C), `M_p = Â[C:, :C] + Â[:C, C:]ᵀ` (P×C).
7. Confidence reweighting R over each candidate vector (each row of M_c over the classes:
   CPDO; each column of M_p over the patches: PPDO): `q` = min-max normalised vector,
   `g = 1 + α_l` where `q ≥ τ_h`, `1 - α_l` where `q ≤ τ_l`, 1 elsewhere (g is a constant:
   no gradient), `W = q·g`. CPDO is skipped when C = 1.
8. `X̃_cls = W_c·O_cls`, `X̃_pat = W_p·O_cls` with `O_cls` the class rows of the attention
   output O (after the output projection).
9. `O′ = O + β·concat(X̃_cls, X̃_pat)` before the residual add (or the increment is added
   to the block's output).

Everything is written in `keras.ops` (TensorFlow, JAX, PyTorch; exportable from TensorFlow)
and computed in float32 whatever the compute dtype; the increment is cast back to the
output's dtype.
"""

import math
import numbers

import keras
from keras import ops

from wsss_keras.backbones.transformer import AttentionHook

_PACKAGE = "wsss_keras"
_EPS = 1e-6

_CHOICES = {
    "colour_space": ("rgb", "lab"),
    "combine": ("hadamard", "matmul"),
    "threshold_rule": ("fixed", "mean_std"),
    "alpha_schedule": ("depth", "constant", "iteration"),
    "head_handling": ("mean", "per_head"),
    "inject_at": ("attention_output", "block_output"),
}

# sRGB (D65) -> CIE XYZ, and the D65 white point.
_SRGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
# Lab is divided by this so that distances are on the scale of RGB in [0, 1] (see `rgb_to_lab`).
LAB_SCALE = 100.0


def _bad(knob, value, allowed):
    return ValueError(f"DOEI: {knob}={value!r} is not allowed; expected {allowed}.")


def _number(knob, value, low=None, high=None, low_open=False, allowed=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise _bad(knob, value, allowed)
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise _bad(knob, value, allowed)
    if high is not None and value > high:
        raise _bad(knob, value, allowed)
    return value


def _choice(knob, value):
    if value not in _CHOICES[knob]:
        raise _bad(knob, value, f"one of {list(_CHOICES[knob])}")
    return value


def _flag(knob, value):
    if not isinstance(value, bool):
        raise _bad(knob, value, "True or False")
    return value


def _layers(value):
    allowed = '"all", an int k >= 1 (the last k blocks) or a non-empty list of distinct 0-based block indices'
    if isinstance(value, str):
        if value != "all":
            raise _bad("layers", value, allowed)
        return "all"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if int(value) < 1:
            raise _bad("layers", value, allowed)
        return int(value)
    if isinstance(value, (list, tuple)) and value:
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0 for v in value):
            raise _bad("layers", value, allowed)
        indices = [int(v) for v in value]
        if len(set(indices)) != len(indices):
            raise _bad("layers", value, allowed)
        return sorted(indices)
    raise _bad("layers", value, allowed)


# ---------------------------------------------------------------------------------------------
# Building blocks (functions of tensors, usable on their own)
# ---------------------------------------------------------------------------------------------


def rgb_to_lab(rgb):
    """sRGB in [0, 1] (last axis = 3) to CIE Lab (D65), divided by `LAB_SCALE` = 100.

    L* runs over [0, 100] and a*, b* over roughly [-110, 110], so Lab / 100 puts black and
    white at distance 1 (√3 ≈ 1.73 in RGB) and a kernel width σ = 0.1 means ΔE*ab = 10 (about
    the distance at which two colours are clearly distinct). This lets `sigma_rgb` keep its
    meaning in both colour spaces.

    Example:
    >>> lab = rgb_to_lab(keras.ops.ones((1, 3)))  # white: L* = 100, a* = b* = 0
    >>> [round(float(v), 3) for v in keras.ops.convert_to_numpy(lab)[0]]
    [1.0, 0.0, 0.0]
    """
    rgb = ops.clip(ops.cast(rgb, "float32"), 0.0, 1.0)
    linear = ops.where(
        rgb <= 0.04045, rgb / 12.92, ops.power((ops.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4)
    )
    matrix = ops.convert_to_tensor([list(row) for row in _SRGB_TO_XYZ], dtype="float32")
    xyz = ops.matmul(linear, ops.transpose(matrix)) / ops.convert_to_tensor(_WHITE_D65, dtype="float32")
    delta = 6.0 / 29.0
    f = ops.where(
        xyz > delta ** 3,
        ops.power(ops.maximum(xyz, delta ** 3), 1.0 / 3.0),
        xyz / (3.0 * delta ** 2) + 4.0 / 29.0,
    )
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    lab = ops.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)
    return lab / LAB_SCALE


def patch_colours(images, patch_size, colour_space="rgb"):
    """Mean colour of every patch: `(B, P, 3)`, row-major over the `(H // p, W // p)` grid.

    Args:
        images: `(B, H, W, 3)` RGB in [0, 1], the view fed to the network.
        patch_size: int, pixels per token side (valid pooling: the remainder is dropped).
        colour_space: "rgb", or "lab" (the patch's mean RGB converted with `rgb_to_lab`).
    """
    images = ops.cast(images, "float32")
    pooled = ops.average_pool(images, pool_size=patch_size, strides=patch_size, padding="valid")
    colours = ops.reshape(pooled, (ops.shape(pooled)[0], -1, 3))
    if colour_space == "lab":
        colours = rgb_to_lab(colours)
    return colours


def colour_kernel(colours, sigma, num_class_tokens):
    """Gaussian colour affinity `exp(-‖r_p - r_q‖² / 2σ²)` padded with 1 for the class tokens.

    Args:
        colours: `(B, P, 3)` patch colours.
        sigma: kernel width on the colours' scale.
        num_class_tokens: C; rows and columns 0..C-1 of the result are 1.

    Returns:
        `(B, C + P, C + P)` float32.
    """
    # ‖r_p‖² + ‖r_q‖² - 2 r_p·r_q: one (P, P) product instead of a (P, P, 3) difference tensor
    # (the largest node of the exported quickstart graph). Centred first, which leaves distances
    # alone and keeps the norms small, so rounding stays near 1e-7; clipped at 0 against it.
    colours = ops.cast(colours, "float32")
    colours = colours - ops.mean(colours, axis=1, keepdims=True)
    squared = ops.sum(ops.square(colours), axis=-1)
    products = ops.matmul(colours, ops.swapaxes(colours, -1, -2))
    distance = ops.maximum(ops.expand_dims(squared, 2) + ops.expand_dims(squared, 1) - 2.0 * products, 0.0)
    kernel = ops.exp(distance * (-0.5 / (sigma * sigma)))
    c = int(num_class_tokens)
    return ops.pad(kernel, [[0, 0], [c, 0], [c, 0]], constant_values=1.0)


def cosine_similarity_matrix(embeddings):
    """`Ê·Êᵀ` with `Ê` the row-wise L2-normalised `(B, N, D)` embeddings: `(B, N, N)` float32."""
    embeddings = ops.cast(embeddings, "float32")
    norm = ops.sqrt(ops.sum(ops.square(embeddings), axis=-1, keepdims=True))
    unit = embeddings / ops.maximum(norm, 1e-12)
    return ops.matmul(unit, ops.swapaxes(unit, -1, -2))


def embedding_guidance(similarity, kernel, combine="hadamard"):
    """The row-stochastic embedding-guided feature `G̃` from S and the padded colour kernel K.

    "hadamard": `G = ReLU(K ⊙ S)`; "matmul": `G = ReLU(K·S)` (the figure's ⊗ read as a matrix
    product). Then `G̃_ij = G_ij / (Σ_j G_ij + 1e-6)`.
    """
    if combine == "hadamard":
        guidance = kernel * similarity
    else:
        guidance = ops.matmul(kernel, similarity)
    guidance = ops.relu(guidance)
    return guidance / (ops.sum(guidance, axis=-1, keepdims=True) + _EPS)


def confidence_reweight(values, axis, alpha, threshold_rule="fixed", tau_high=0.7, tau_low=0.25):
    """DOEI's confidence reweighting R along `axis` (each slice along it is one candidate set).

    `q = (m - min m) / (max m - min m + 1e-6)`; `g = 1 + α` where `q ≥ τ_h`, `1 - α` where
    `q ≤ τ_l`, 1 elsewhere (the high rule wins where both hold); `W = q·g`. With
    `threshold_rule="mean_std"`, `τ_h = mean(q) + std(q)` and `τ_l = mean(q) - std(q)` per
    candidate set. `g` carries no gradient; `W` does, through `q`.

    Args:
        values: float tensor.
        axis: int, the candidate axis.
        alpha: Python float or scalar tensor, the amplification α.
        threshold_rule: "fixed" or "mean_std".
        tau_high, tau_low: the fixed thresholds on q.

    Example:
    >>> import numpy as np
    >>> w = confidence_reweight(np.array([0.0, 0.5, 1.0], "float32"), axis=0, alpha=0.5)
    >>> np.round(keras.ops.convert_to_numpy(w), 3).tolist()  # q = 0, .5, 1 -> g = .5, 1, 1.5
    [0.0, 0.5, 1.5]
    """
    values = ops.cast(values, "float32")
    low_value = ops.min(values, axis=axis, keepdims=True)
    high_value = ops.max(values, axis=axis, keepdims=True)
    q = (values - low_value) / (high_value - low_value + _EPS)
    if threshold_rule == "mean_std":
        mean = ops.mean(q, axis=axis, keepdims=True)
        std = ops.std(q, axis=axis, keepdims=True)
        tau_high, tau_low = mean + std, mean - std
    high = ops.cast(ops.greater_equal(q, tau_high), "float32")
    low = ops.cast(ops.less_equal(q, tau_low), "float32") * (1.0 - high)
    alpha = ops.cast(alpha, "float32")
    gain = ops.stop_gradient(1.0 + alpha * high - alpha * low)
    return q * gain


# ---------------------------------------------------------------------------------------------
# The configuration and the hook
# ---------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DOEI:
    """DOEI's settings; `make_hook` turns them into an attention hook for one forward pass.

    A plain configuration object (not a layer, no weights): DOEI adds no parameters. Hosts
    store it in their config (`get_config()` is a JSON-able dict) and, in every forward pass
    of the encoder, call `make_hook(...)` and pass the hook as `hook=` to `ViTEncoder.call`.

    Every default below is **RECONSTRUCTED** (methods/doei.md §2.6): the paper's code is not
    public and its text gives no equations or hyper-parameters. None of them is DOEI's own
    number; treat them as tunable and calibrate them (spec §9).

    | knob | default | meaning |
    |---|---|---|
    | `layers` | `"all"` | hooked blocks: `"all"`, an int k (the last k blocks) or a list of 0-based indices |
    | `sigma_rgb` | 0.1 | σ of the colour kernel K, on RGB in [0, 1] (Lab is scaled by 1/100, `rgb_to_lab`) |
    | `colour_space` | `"rgb"` | `"rgb"` or `"lab"` (CIE Lab/100 of each patch's mean sRGB colour) |
    | `combine` | `"hadamard"` | `G = ReLU(K ⊙ S)`, or `"matmul"`: `G = ReLU(K·S)` (figure-literal ⊗); both row-normalised |
    | `hybrid_weight` | 1.0 | λ in `Â = (Ā + λ·G̃)/(1 + λ)`; 0 = no hybrid-feature alignment |
    | `threshold_rule` | `"fixed"` | `"fixed"` (τ_h, τ_l below) or `"mean_std"` (mean ± std of q per candidate vector) |
    | `tau_high` | 0.7 | q ≥ τ_h is amplified (ToCo's high CAM threshold, reused) |
    | `tau_low` | 0.25 | q ≤ τ_l is suppressed (ToCo's low CAM threshold, reused) |
    | `alpha_max` | 0.5 | the largest α in `g = 1 ± α`; in [0, 1] so that weights stay ≥ 0 |
    | `alpha_schedule` | `"depth"` | α_l = α_max·l/L (l 1-based); `"constant"`: α_max; `"iteration"`: α_max·progress |
    | `injection_scale` | 1.0 | β in `O′ = O + β·concat(X̃_cls, X̃_pat)` |
    | `head_handling` | `"mean"` | `"mean"`: Ā = head mean; `"per_head"`: hybrid + reweighting per head, mean of the re-embeddings |
    | `inject_at` | `"attention_output"` | add to the attention output before the residual, or `"block_output"`: to the block's output |
    | `stop_gradient_weights` | True | stop the gradient through the reweighted matrices W (ablated: README) |
    | `in_crop_passes` | True | read by the host only: DOEI also in ToCo's CTC crop passes / SeCo's key encoder (False: main view only) |

    Always: the indicator g carries no gradient; CPDO (the class↔class block) is skipped when
    there is one class token (X̃_cls = 0) and active with several (MCTformer-style
    `ViTEncoder(num_class_tokens=K)`); the colour kernel is 1 on every row and column that
    touches a class token. With `alpha_schedule="iteration"` and no `progress`, α = α_max
    (the end of training: what a trained model sees at inference).

    Args: the knobs of the table. Each is checked; a bad value raises `ValueError` naming
    the knob, the value and what is allowed.

    Example:
    >>> from wsss_keras.backbones.vit import ViTEncoder
    >>> encoder = ViTEncoder(patch_size=8, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64,
    ...                      pos_embed_grid=4)
    >>> encoder.build((None, None, None, 3))
    >>> images = keras.random.uniform((2, 32, 40, 3))          # RGB in [0, 1]
    >>> normalised = (images - 0.5) / 0.5
    >>> doei = DOEI(layers=1, sigma_rgb=0.2)
    >>> hook = doei.make_hook(encoder.embed(normalised), images, patch_size=8,
    ...                       num_class_tokens=1, num_layers=2)
    >>> tuple(encoder(normalised, hook=hook)["tokens"].shape)
    (2, 21, 32)
    >>> DOEI.from_config(doei.get_config()).get_config() == doei.get_config()
    True
    """

    def __init__(
        self,
        layers="all",
        sigma_rgb=0.1,
        colour_space="rgb",
        combine="hadamard",
        hybrid_weight=1.0,
        threshold_rule="fixed",
        tau_high=0.7,
        tau_low=0.25,
        alpha_max=0.5,
        alpha_schedule="depth",
        injection_scale=1.0,
        head_handling="mean",
        inject_at="attention_output",
        stop_gradient_weights=True,
        in_crop_passes=True,
    ):
        self.layers = _layers(layers)
        self.sigma_rgb = _number("sigma_rgb", sigma_rgb, low=0.0, low_open=True, allowed="a finite number > 0")
        self.colour_space = _choice("colour_space", colour_space)
        self.combine = _choice("combine", combine)
        self.hybrid_weight = _number("hybrid_weight", hybrid_weight, low=0.0, allowed="a finite number >= 0")
        self.threshold_rule = _choice("threshold_rule", threshold_rule)
        self.tau_high = _number("tau_high", tau_high, low=0.0, high=1.0, allowed="a number in [0, 1]")
        self.tau_low = _number("tau_low", tau_low, low=0.0, high=1.0, allowed="a number in [0, 1]")
        if not self.tau_low < self.tau_high:
            raise ValueError(
                f"DOEI: tau_low={self.tau_low!r} must be below tau_high={self.tau_high!r} "
                "(both thresholds on q in [0, 1])."
            )
        self.alpha_max = _number("alpha_max", alpha_max, low=0.0, high=1.0, allowed="a number in [0, 1]")
        self.alpha_schedule = _choice("alpha_schedule", alpha_schedule)
        self.injection_scale = _number("injection_scale", injection_scale, low=0.0, allowed="a finite number >= 0")
        self.head_handling = _choice("head_handling", head_handling)
        self.inject_at = _choice("inject_at", inject_at)
        self.stop_gradient_weights = _flag("stop_gradient_weights", stop_gradient_weights)
        self.in_crop_passes = _flag("in_crop_passes", in_crop_passes)

    def hooked_blocks(self, num_layers):
        """The sorted 0-based indices of the blocks DOEI runs in, for an encoder of `num_layers`."""
        num_layers = int(num_layers)
        if num_layers < 1:
            raise ValueError(f"DOEI: num_layers={num_layers!r} must be >= 1.")
        if self.layers == "all":
            return list(range(num_layers))
        if isinstance(self.layers, int):
            if self.layers > num_layers:
                raise ValueError(
                    f"DOEI: layers={self.layers!r} asks for the last {self.layers} blocks of an encoder "
                    f"with {num_layers}; expected 1..{num_layers}."
                )
            return list(range(num_layers - self.layers, num_layers))
        outside = [i for i in self.layers if i >= num_layers]
        if outside:
            raise ValueError(
                f"DOEI: layers={self.layers!r} names blocks {outside} of an encoder with {num_layers} "
                f"blocks; expected 0-based indices in 0..{num_layers - 1}."
            )
        return list(self.layers)

    def make_hook(self, embeddings, images, patch_size, num_class_tokens, num_layers, progress=None):
        """An attention hook (`DOEIHook`) for ONE forward pass of a ViT encoder.

        Args:
            embeddings: X⁰ `(B, N, D)`, the encoder's input to its first block (its
                `"embeddings"` output, or `encoder.embed(images)`). None: the hook takes X⁰
                from block 0's input as the encoder runs (block 0 must then be run with it).
            images: `(B, H, W, 3)` RGB in [0, 1] at the resolution fed to the network.
            patch_size: int, pixels per token side (the effective stride); the grid is
                `(H // patch_size, W // patch_size)` and `N = num_class_tokens + h·w`.
            num_class_tokens: int C ≥ 1, class tokens in front of the patch tokens.
            num_layers: int L, the encoder's number of blocks (for `layers` and α_l = α_max·l/L).
            progress: optional scalar (tensor or float) in [0, 1], the training progress,
                read by `alpha_schedule="iteration"` (None there means 1).

        Returns:
            A `DOEIHook`.
        """
        return DOEIHook(self, embeddings, images, patch_size, num_class_tokens, num_layers, progress)

    def get_config(self):
        return {
            "layers": self.layers if not isinstance(self.layers, list) else list(self.layers),
            "sigma_rgb": self.sigma_rgb,
            "colour_space": self.colour_space,
            "combine": self.combine,
            "hybrid_weight": self.hybrid_weight,
            "threshold_rule": self.threshold_rule,
            "tau_high": self.tau_high,
            "tau_low": self.tau_low,
            "alpha_max": self.alpha_max,
            "alpha_schedule": self.alpha_schedule,
            "injection_scale": self.injection_scale,
            "head_handling": self.head_handling,
            "inject_at": self.inject_at,
            "stop_gradient_weights": self.stop_gradient_weights,
            "in_crop_passes": self.in_crop_passes,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        changed = {k: v for k, v in self.get_config().items() if v != _DEFAULTS[k]}
        return "DOEI(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"


class DOEIHook(AttentionHook):
    """The attention hook `DOEI.make_hook` returns; serves every block of one forward pass.

    `attention_probs` keeps the probabilities of a hooked block and returns them unchanged;
    `attention_output` computes the block's re-embedding from them and returns
    `O + β·concat(X̃_cls, X̃_pat)` (or, with `inject_at="block_output"`, returns O and
    `block_output` adds the increment to the block's output). S, K and G̃ are computed once,
    on first use, and shared by all hooked blocks. Do not reuse a hook for another batch.
    """

    def __init__(self, config, embeddings, images, patch_size, num_class_tokens, num_layers, progress=None):
        self.config = config
        self.patch_size = int(patch_size)
        self.num_class_tokens = int(num_class_tokens)
        self.num_layers = int(num_layers)
        if self.patch_size < 1:
            raise ValueError(f"DOEI: patch_size={patch_size!r} must be >= 1.")
        if self.num_class_tokens < 1:
            raise ValueError(
                f"DOEI: num_class_tokens={num_class_tokens!r}; DOEI re-embeds with the class tokens, so it "
                "needs at least one."
            )
        self.blocks = frozenset(config.hooked_blocks(self.num_layers))
        self.embeddings = embeddings
        self.images = images
        if images is not None and images.shape[-1] not in (None, 3):
            raise ValueError(f"DOEI: images must be (B, H, W, 3) RGB in [0, 1], got shape {tuple(images.shape)}.")
        self.progress = progress
        self._guidance = None
        self._probs = {}
        self._increments = {}

    # -- shared terms ----------------------------------------------------------------------

    def alpha(self, block_index):
        """α of block `block_index` (0-based): a Python float, or a tensor for "iteration"."""
        config = self.config
        if config.alpha_schedule == "constant":
            return config.alpha_max
        if config.alpha_schedule == "depth":
            return config.alpha_max * (int(block_index) + 1) / self.num_layers
        if self.progress is None:
            return config.alpha_max
        progress = ops.clip(ops.cast(self.progress, "float32"), 0.0, 1.0)
        return config.alpha_max * progress

    def guidance(self):
        """G̃ `(B, N, N)` float32 (computed on the first call, then cached)."""
        if self._guidance is None:
            if self.embeddings is None:
                raise ValueError(
                    "DOEI: the hook has no initial embeddings X⁰: pass `embeddings` to make_hook, or run the "
                    "encoder from block 0 with the hook so that it can take X⁰ from block 0's input."
                )
            if self.images is None:
                raise ValueError("DOEI: the hook needs the RGB images (in [0, 1]) for the colour kernel.")
            similarity = cosine_similarity_matrix(self.embeddings)
            colours = patch_colours(self.images, self.patch_size, self.config.colour_space)
            self._check_grid(colours, similarity)
            kernel = colour_kernel(colours, self.config.sigma_rgb, self.num_class_tokens)
            self._guidance = embedding_guidance(similarity, kernel, self.config.combine)
        return self._guidance

    def _check_grid(self, colours, similarity):
        patches, tokens = colours.shape[1], similarity.shape[-1]
        if patches is not None and tokens is not None and patches + self.num_class_tokens != tokens:
            raise ValueError(
                f"DOEI: the images give {patches} patches of {self.patch_size} pixels "
                f"(grid H // patch_size x W // patch_size) but the embeddings have {tokens} tokens with "
                f"{self.num_class_tokens} class tokens; pass the images fed to the network and its effective "
                "patch stride."
            )

    # -- the re-embedding -----------------------------------------------------------------

    def increment(self, probs, output, block_index):
        """`β·concat(X̃_cls, X̃_pat)` `(B, N, D)` float32 for attention probabilities `probs`
        `(B, H, N, N)` and attention output `output` `(B, N, D)` of block `block_index`."""
        config, c = self.config, self.num_class_tokens
        attention = ops.cast(probs, "float32")
        if config.head_handling == "mean":
            attention = ops.mean(attention, axis=1)  # (B, N, N)
        if config.hybrid_weight > 0.0:
            guidance = self.guidance()
            if config.head_handling == "per_head":
                guidance = ops.expand_dims(guidance, 1)
            attention = (attention + config.hybrid_weight * guidance) / (1.0 + config.hybrid_weight)
        alpha = self.alpha(block_index)
        rule = dict(threshold_rule=config.threshold_rule, tau_high=config.tau_high, tau_low=config.tau_low)
        class_output = ops.cast(output[:, :c], "float32")  # (B, C, D)

        # PPDO: patch->class plus transposed class->patch, reweighted per class over the patches.
        patch_block = attention[..., c:, :c] + ops.swapaxes(attention[..., :c, c:], -1, -2)  # (..., P, C)
        patch_weights = confidence_reweight(patch_block, axis=-2, alpha=alpha, **rule)
        if config.head_handling == "per_head":
            patch_weights = ops.mean(patch_weights, axis=1)  # mean of the per-head re-embeddings
        if config.stop_gradient_weights:
            patch_weights = ops.stop_gradient(patch_weights)
        patch_part = ops.matmul(patch_weights, class_output)  # (B, P, D)

        # CPDO: the symmetrised class<->class block, reweighted per row over the classes.
        if c > 1:
            class_block = attention[..., :c, :c]
            class_block = class_block + ops.swapaxes(class_block, -1, -2)
            class_weights = confidence_reweight(class_block, axis=-1, alpha=alpha, **rule)
            if config.head_handling == "per_head":
                class_weights = ops.mean(class_weights, axis=1)
            if config.stop_gradient_weights:
                class_weights = ops.stop_gradient(class_weights)
            class_part = ops.matmul(class_weights, class_output)  # (B, C, D)
        else:
            class_part = ops.zeros_like(class_output)
        return config.injection_scale * ops.concatenate([class_part, patch_part], axis=1)

    # -- the hook contract ----------------------------------------------------------------

    def attention_probs(self, probs, block_index, tokens):
        if block_index in self.blocks:
            self._probs[block_index] = probs
        return probs

    def attention_output(self, output, block_index, tokens):
        if self.embeddings is None and block_index == 0 and self._guidance is None:
            self.embeddings = tokens  # block 0's input is X⁰
        if block_index not in self.blocks:
            return output
        if block_index not in self._probs:
            raise ValueError(f"DOEI: block {block_index} reached attention_output without its attention_probs.")
        increment = self.increment(self._probs.pop(block_index), output, block_index)
        if self.config.inject_at == "block_output":
            self._increments[block_index] = increment
            return output
        return output + ops.cast(increment, output.dtype)

    def block_output(self, tokens, block_index, block_input):
        if block_index not in self._increments:
            return tokens
        return tokens + ops.cast(self._increments.pop(block_index), tokens.dtype)


_DEFAULTS = DOEI().get_config()
