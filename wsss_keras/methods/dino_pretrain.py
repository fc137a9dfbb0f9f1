"""A small ViT trained self-supervised, DINO-style, for the CPU recipe of SSR.

SSR's semantic-guided propagation mixes CLIP's attention with that of a frozen DINO ViT-S/16,
whose self-distilled attention follows objects (Caron et al., "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021). No DINO weights are available offline, and
the tiny CLIP the CPU recipes train has nearly uniform attention, so the CPU recipe trains a
`StemViT` on the training images the way DINO trained its ViTs:

- a student and a teacher of the same architecture; the teacher is the exponential moving
  average of the student, its momentum rising from `momentum` to 1 on a cosine over the
  steps, and it is the network that is kept;
- every image gives two global views and a few local ones (`data.transforms.MultiCropTransform`);
  the teacher sees the global views, the student all of them;
- a head on the class token: a 3-layer MLP, an L2-normalised bottleneck and a last layer with
  unit-norm columns (DINO's `norm_last_layer`) giving `prototypes` outputs; optionally with
  batch normalisation after its hidden layers (DINO's `use_bn`, `head_batch_norm`), without
  which the CPU recipe's small ViT collapsed to uniform outputs in its first 30 steps;
- the loss: for every pair of a teacher view and a different student view, the cross-entropy
  between the teacher's softmax of `(output - centre) / teacher_temperature` and the student's
  softmax at `student_temperature`, averaged over the pairs; the centre is an EMA (0.9) of the
  teacher's batch mean, which with the sharp teacher keeps the outputs from collapsing.

Left out from DINO's recipe: gradient clipping, freezing the last layer in the first epoch, the
weight-decay schedule. The image labels are never read. Nothing here is a published result; it
stands in for DINO's weights on the CPU.
"""

import math

import keras
from keras import ops

from wsss_keras.backbones.vit.stem_vit import StemViT

_PACKAGE = "wsss_keras"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DINOHead(keras.layers.Layer):
    """DINO's projection head: MLP (GELU), L2-normalised bottleneck, unit-column last layer.

    Args:
        prototypes: outputs K.
        hidden: width of the two hidden layers.
        bottleneck: width of the normalised bottleneck.
        batch_norm: batch normalisation (batch statistics, learned scale and shift) after each
            hidden layer, DINO's `use_bn`. It takes out what all images share, so the outputs
            of an untrained network already differ between images (measured on the CPU
            recipe's StemViT at init: the centred teacher's entropy 2.6 nats with it, 5.4 of a
            uniform 5.5 without).
    """

    def __init__(self, prototypes=256, hidden=256, bottleneck=64, batch_norm=False, **kwargs):
        super().__init__(**kwargs)
        self.prototypes, self.hidden, self.bottleneck = int(prototypes), int(hidden), int(bottleneck)
        self.batch_norm = bool(batch_norm)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        hidden_activation = None if self.batch_norm else "gelu"  # with BN: Linear, BN, GELU
        self.mlp = [keras.layers.Dense(self.hidden, activation=hidden_activation, kernel_initializer=init, name="fc1"),
                    keras.layers.Dense(self.hidden, activation=hidden_activation, kernel_initializer=init, name="fc2"),
                    keras.layers.Dense(self.bottleneck, kernel_initializer=init, name="fc3")]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.mlp:
            layer.build(shape)
            shape = shape[:-1] + (layer.units,)
        self.last = self.add_weight(shape=(self.bottleneck, self.prototypes), initializer="glorot_uniform",
                                    name="last_layer")
        # Batch statistics only: the heads are dropped after training, so no moving averages.
        self.norms = [(self.add_weight(shape=(self.hidden,), initializer="ones", name=f"bn{i}_scale"),
                       self.add_weight(shape=(self.hidden,), initializer="zeros", name=f"bn{i}_shift"))
                      for i in (1, 2)] if self.batch_norm else []
        self.built = True

    def call(self, features, freeze_last=None):
        """`freeze_last`: a boolean scalar; while true no gradient reaches the last layer."""
        x = features
        for index, layer in enumerate(self.mlp):
            x = layer(x)
            if index < len(self.norms):  # empty without batch_norm
                mean, variance = ops.moments(x, axes=[0], keepdims=True)
                scale, shift = self.norms[index]
                x = ops.gelu((x - mean) * ops.rsqrt(variance + 1e-5) * scale + shift, approximate=False)
        x = x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))
        last = ops.convert_to_tensor(self.last)
        last = last if freeze_last is None else ops.where(freeze_last, ops.stop_gradient(last), last)
        columns = last / ops.sqrt(ops.maximum(ops.sum(ops.square(last), axis=0, keepdims=True), 1e-12))
        return ops.matmul(x, columns)

    def get_config(self):
        config = super().get_config()
        config.update(prototypes=self.prototypes, hidden=self.hidden, bottleneck=self.bottleneck,
                      batch_norm=self.batch_norm)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DINOPretrainer(keras.Model):
    """Self-distillation of a `StemViT` (see the module); `.teacher` is the trained network.

    Args:
        backbone: the student `StemViT` (or its config); the teacher starts as its copy.
        total_steps: the training's length, for the teacher momentum's cosine.
        momentum: the teacher momentum at step 0 (DINO: 0.996), rising to 1.
        prototypes, head_hidden, bottleneck: the heads' sizes.
        head_batch_norm: batch normalisation in the heads' hidden layers (`DINOHead`).
        student_temperature, teacher_temperature: DINO's 0.1 and 0.04.
        center_momentum: the centre's EMA momentum (0.9).

    Call arguments:
        inputs: `{"global_views": (B, 2, G, G, 3), "local_views": (B, L, l, l, 3)}`.
        training: in training, the call first moves the teacher toward the student and
            afterwards the centre toward the teacher's batch mean (both variables, so every
            backend's trainer keeps the updates).

    Returns:
        `{"student": (2 + L, B, K), "teacher": (2, B, K)}`: the heads' outputs per view, the
        teacher's minus the centre it was scored against.

    Example:
    >>> import numpy as np
    >>> vit = StemViT(stem=dict(widths=(8, 16), norm="group"), hidden_dim=16, num_layers=1, num_heads=2,
    ...               mlp_dim=32, pos_embed_grid=4)
    >>> model = DINOPretrainer(vit, total_steps=10, prototypes=8, head_hidden=16, bottleneck=4)
    >>> outputs = model({"global_views": np.zeros((2, 2, 16, 16, 3), "float32"),
    ...                  "local_views": np.zeros((2, 3, 8, 8, 3), "float32")})
    >>> tuple(outputs["student"].shape), tuple(outputs["teacher"].shape)
    ((5, 2, 8), (2, 2, 8))
    """

    def __init__(self, backbone, total_steps, momentum=0.996, prototypes=256, head_hidden=256, bottleneck=64,
                 student_temperature=0.1, teacher_temperature=0.04, center_momentum=0.9, freeze_last_layer_steps=0,
                 head_batch_norm=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.total_steps = max(int(total_steps), 1)
        self.momentum = float(momentum)
        self.student_temperature, self.teacher_temperature = float(student_temperature), float(teacher_temperature)
        self.center_momentum = float(center_momentum)
        self.freeze_last_layer_steps = int(freeze_last_layer_steps)
        head = dict(prototypes=prototypes, hidden=head_hidden, bottleneck=bottleneck, batch_norm=head_batch_norm)
        self.student = backbone
        self.teacher = StemViT.from_config({**backbone.get_config(), "name": "teacher"})
        self.student_head = DINOHead(**head, name="student_head")
        self.teacher_head = DINOHead(**head, name="teacher_head")
        for network in (self.student, self.teacher):
            network.build((None, None, None, 3))
        for head_layer in (self.student_head, self.teacher_head):
            head_layer.build((None, backbone.hidden_dim))
        for teacher, student in zip(self._teacher_weights, self._student_weights):
            # A host copy: on JAX an assigned array would share the student's buffer, which the
            # trainer then donates twice.
            teacher.assign(keras.ops.convert_to_numpy(student))
        self.teacher.trainable = False
        self.teacher_head.trainable = False
        self.center = self.add_weight(shape=(1, int(prototypes)), initializer="zeros", trainable=False, name="center")
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False, name="step")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("dino", "teacher_entropy")}
        self.built = True

    @property
    def _student_weights(self):
        return self.student.weights + self.student_head.weights

    @property
    def _teacher_weights(self):
        return self.teacher.weights + self.teacher_head.weights

    def build_from_config(self, config):
        self.built = True

    def teacher_momentum(self):
        """`1 - (1 - momentum) (cos(pi step / total_steps) + 1) / 2`: DINO's cosine to 1."""
        progress = ops.minimum(ops.cast(self.step, "float32") / self.total_steps, 1.0)
        return 1.0 - (1.0 - self.momentum) * (ops.cos(math.pi * progress) + 1.0) / 2.0

    def _class_outputs(self, network, head, views, freeze_last=None):
        """Head outputs `(V, B, K)` of `views` `(B, V, H, W, 3)`, all views in one batch."""
        shape = ops.shape(views)
        flat = ops.reshape(ops.transpose(views, (1, 0, 2, 3, 4)), (-1,) + tuple(views.shape[2:]))
        outputs = head(network(flat)["class_tokens"][:, 0], freeze_last=freeze_last)
        return ops.reshape(outputs, (shape[1], shape[0], head.prototypes))

    def call(self, inputs, training=None):
        global_views = ops.convert_to_tensor(inputs["global_views"], self.compute_dtype)
        local_views = ops.convert_to_tensor(inputs["local_views"], self.compute_dtype)
        if training:
            momentum = self.teacher_momentum()
            for teacher, student in zip(self._teacher_weights, self._student_weights):
                teacher.assign(momentum * teacher + (1.0 - momentum) * ops.stop_gradient(student))
        teacher = ops.stop_gradient(self._class_outputs(self.teacher, self.teacher_head, global_views))
        centred = teacher - self.center
        if training:
            batch_mean = ops.mean(ops.reshape(teacher, (-1, self.teacher_head.prototypes)), axis=0, keepdims=True)
            self.center.assign(self.center * self.center_momentum + batch_mean * (1.0 - self.center_momentum))
            self.step.assign(self.step + 1.0)
        # DINO keeps the last layer fixed in the first epoch, which it found helps training start.
        freeze = (ops.less_equal(self.step, float(self.freeze_last_layer_steps))
                  if training and self.freeze_last_layer_steps else None)
        student = [self._class_outputs(self.student, self.student_head, global_views, freeze)]
        if local_views.shape[1]:
            student.append(self._class_outputs(self.student, self.student_head, local_views, freeze))
        return {"student": ops.concatenate(student, axis=0), "teacher": centred}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        outputs = y_pred if y_pred is not None else self(x, training=True)
        targets = ops.softmax(outputs["teacher"] / self.teacher_temperature, axis=-1)
        log_probs = ops.log_softmax(outputs["student"] / self.student_temperature, axis=-1)
        terms = [ops.mean(-ops.sum(targets[i] * log_probs[j], axis=-1))
                 for i in range(targets.shape[0]) for j in range(log_probs.shape[0]) if i != j]
        loss = ops.sum(ops.stack(terms)) / len(terms)
        entropy = ops.mean(-ops.sum(targets * ops.log(ops.maximum(targets, 1e-12)), axis=-1))
        self.trackers["dino"].update_state(loss)
        self.trackers["teacher_entropy"].update_state(entropy)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(backbone=keras.saving.serialize_keras_object(self.student), total_steps=self.total_steps,
                      momentum=self.momentum, prototypes=self.student_head.prototypes,
                      head_hidden=self.student_head.hidden, bottleneck=self.student_head.bottleneck,
                      student_temperature=self.student_temperature, teacher_temperature=self.teacher_temperature,
                      center_momentum=self.center_momentum, freeze_last_layer_steps=self.freeze_last_layer_steps,
                      head_batch_norm=self.student_head.batch_norm)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
