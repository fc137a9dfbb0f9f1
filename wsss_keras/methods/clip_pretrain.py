"""A tiny CLIP trained from scratch on captions, for the CPU recipes of the CLIP methods.

WeCLIP and SSR run on a frozen, pretrained CLIP. With no pretrained CLIP available offline, the
CPU recipes first train a small CLIP-shaped model (conv stem + a few ViT blocks, a small text
tower) on the synthetic training images with captions made from their image-level labels
("a photo of a boat and a car."). It is trained the way the methods will use it:

- the image embedding is the mean of the projected patch tokens (WeCLIP's, not the class
  token), so Grad-CAM later differentiates the quantity that was trained;
- a caption loss, CLIP's symmetric InfoNCE over the batch, where images with the same label set
  count as positives of each other (their captions say the same);
- a prompt loss: the softmax of `logit_scale · cos(image, prompt_c)` over the class prompts
  ("a photo of a boat.") against the label distribution, the comparison Grad-CAM's target is
  made of;
- a token loss (`token_weight`): per class, the largest `cos(token, prompt_c)` over the patch
  tokens, scaled, in a multi-label soft-margin loss. It asks some token of each present class,
  and no token of an absent one, to match the class's prompt, which keeps class evidence
  local; without it a tower trained from scratch spreads the evidence over every token and
  its Grad-CAMs do not localise;
- residual drop (`residual_drop`): during this training only, the last block's residual input
  is dropped for that share of the images, so the block's attention branch alone must carry
  the class evidence. WeCLIP's Grad-CAM differentiates exactly that branch (the residual is a
  constant there); a tower that routes its evidence around it gives flat Grad-CAMs.

Nothing here is a published method; it only stands in for OpenAI's weights on the CPU.
"""

import keras
import numpy as np
from keras import ops

from wsss_keras.backbones.clip import clip_model  # noqa: F401  (registers CLIP, which a saved CaptionCLIP holds)
from wsss_keras.ops.losses import multilabel_soft_margin_loss

_PACKAGE = "wsss_keras"
CAPTION_TEMPLATE = "a photo of {}."
PROMPT_TEMPLATE = "a photo of a {}."
MAX_LOGIT_SCALE = float(np.log(100.0))


def caption_for(class_names, rng=None, template=CAPTION_TEMPLATE):
    """A caption naming `class_names` in a random order (`rng`) or as given:
    "a photo of a boat and a car."."""
    names = list(class_names)
    if rng is not None:
        rng.shuffle(names)
    return template.format(" and ".join(f"a {name}" for name in names))


def _unit(x):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


def _soft_cross_entropy(logits, targets):
    return -ops.mean(ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CaptionCLIP(keras.Model):
    """Trains a `CLIP` on (image, caption) pairs with class-prompt supervision (see module).

    Args:
        clip: a `CLIP` or its config.
        prompt_ids: `(C, context)` int token ids of the class prompts.
        caption_weight, prompt_weight: the two losses' weights.

    Call arguments:
        images: `(B, H, W, 3)` normalised.

    Returns:
        `(B, N, E)` projected patch tokens (their mean is the image embedding).

    Training targets: `"captions"` `(B, context)` token ids and `"labels"` `(B, C)` multi-hot.

    Example:
    >>> from wsss_keras.backbones.clip.clip_model import CLIP
    >>> clip = CLIP(image=dict(patch_size=4, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32,
    ...                        output_dim=8, pos_embed_grid=4),
    ...             text=dict(vocabulary_size=10, context_length=6, hidden_dim=16, num_layers=1,
    ...                       num_heads=2, mlp_dim=32, output_dim=8))
    >>> model = CaptionCLIP(clip, np.array([[8, 1, 9, 0, 0, 0], [8, 2, 9, 0, 0, 0]]))
    >>> tuple(model(np.zeros((2, 16, 16, 3), "float32")).shape)
    (2, 16, 8)
    """

    def __init__(self, clip, prompt_ids, caption_weight=1.0, prompt_weight=1.0, token_weight=0.0, residual_drop=0.0,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(clip, dict):
            clip = keras.saving.deserialize_keras_object(clip)
        self.clip = clip
        self.clip.build(None)
        self.prompt_ids = np.asarray(prompt_ids, "int32")
        self.caption_weight, self.prompt_weight = float(caption_weight), float(prompt_weight)
        self.token_weight = float(token_weight)
        self.residual_drop = float(residual_drop)
        if not 0.0 <= self.residual_drop < 1.0:
            raise ValueError(f"residual_drop={residual_drop}: give a share in [0, 1).")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("caption", "prompt", "token")}
        self.built = True

    def build_from_config(self, config):
        self.built = True

    def call(self, images, training=None):
        """Projected patch tokens `(B, N, E)`; their mean is the image embedding."""
        encoder = self.clip.image_encoder
        if not (training and self.residual_drop):
            return encoder(images)["projected_tokens"][:, 1:]
        tokens = encoder.embed(images)
        for index, block in enumerate(encoder.blocks[:-1]):
            tokens, _ = block(tokens, block_index=index)
        block = encoder.blocks[-1]
        branch, _ = block.attend(block.norm1(tokens))
        keep = keras.random.uniform((ops.shape(tokens)[0], 1, 1), seed=self.seed_generator) >= self.residual_drop
        mid = ops.where(keep, tokens, 0.0) + branch
        out = mid + block.mlp(block.norm2(mid))
        return encoder.project(out)[:, 1:]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        tokens = y_pred if y_pred is not None else self(x, training=True)
        image = _unit(ops.mean(tokens, axis=1))
        labels = ops.cast(y["labels"], "float32")
        scale = ops.exp(ops.minimum(ops.cast(self.clip.logit_scale, "float32"), MAX_LOGIT_SCALE))
        terms = {}
        if self.caption_weight:
            text = _unit(self.clip.encode_text(y["captions"]))
            logits = scale * ops.matmul(image, ops.transpose(text))
            # Images with the same label set have the same caption: each is a positive of the other.
            same = ops.cast(ops.all(ops.equal(labels[:, None, :], labels[None, :, :]), axis=-1), "float32")
            targets = same / ops.sum(same, axis=-1, keepdims=True)
            terms["caption"] = 0.5 * (_soft_cross_entropy(logits, targets) + _soft_cross_entropy(ops.transpose(logits), targets))
        if self.prompt_weight:
            prompts = _unit(self.clip.encode_text(self.prompt_ids))
            logits = scale * ops.matmul(image, ops.transpose(prompts))
            targets = labels / ops.maximum(ops.sum(labels, axis=-1, keepdims=True), 1.0)
            terms["prompt"] = _soft_cross_entropy(logits, targets)
        if self.token_weight:
            prompts = _unit(self.clip.encode_text(self.prompt_ids))
            similarity = ops.max(ops.einsum("bne,ce->bnc", _unit(tokens), prompts), axis=1)
            terms["token"] = multilabel_soft_margin_loss(labels, scale * similarity)
        total = 0.0
        for name, value in terms.items():
            self.trackers[name].update_state(value)
            total = total + getattr(self, f"{name}_weight") * value
        return total

    def get_config(self):
        config = super().get_config()
        config.update(clip=keras.saving.serialize_keras_object(self.clip), prompt_ids=self.prompt_ids.tolist(),
                      caption_weight=self.caption_weight, prompt_weight=self.prompt_weight,
                      token_weight=self.token_weight, residual_drop=self.residual_drop, seed=self.seed)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
