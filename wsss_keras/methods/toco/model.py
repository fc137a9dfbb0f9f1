"""The ToCo model: a ViT CAM network trained with its losses in `compute_loss` (see the package)."""

import keras
from keras import ops

from wsss_keras.backbones.vit.vit_encoder import ViTEncoder
from wsss_keras.methods.base import WSSSModel
from wsss_keras.ops.cam import (
    cams_to_pseudo_labels,
    crop_box_mask,
    denormalize_unit,
    multiscale_cams,
    refine_pseudo_labels,
    resize_bilinear,
)
from wsss_keras.ops.losses import (
    balanced_segmentation_loss,
    contrastive_token_loss,
    dense_energy_loss,
    label_affinity,
    multilabel_soft_margin_loss,
    patch_token_contrast_loss,
)
from wsss_keras.step_counts import default_steps

_PACKAGE = "wsss_keras"

from wsss_keras.methods.toco.crops import sample_local_crops, uncertainty_roi
from wsss_keras.methods.toco.layers import LargeFOV, ProjectionHead
from wsss_keras.methods.toco.losses import TOCO_LOSS_DEFAULTS, toco_losses


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ToCo(WSSSModel):
    """ToCo: a ViT CAM network with auxiliary CAM, LargeFOV segmentation head, PTC and CTC.

    Args:
        encoder: a `ViTEncoder` (one class token) or its config dict.
        num_classes: foreground classes C; the segmentation head has C + 1 outputs.
        stem: optional `ConvStem` (or its config) in front of the encoder; the encoder's
            `image_channels` must equal the stem's output channels.
        aux_layer: the auxiliary block, Python-style index (−3: the 10th of 12 blocks).
        decoder_channels, decoder_dilation: LargeFOV's width and dilation (512, 5).
        projection: (hidden, bottleneck, output) sizes of the CTC heads (2048, 256, 1024).
        losses: overrides of `TOCO_LOSS_DEFAULTS`.
        doei: optional `DOEI` (or its config) applied through the attention hook.
        max_steps: training length, for DOEI's iteration schedule.
        pooling: "max" (ToCo's global max pool before the classifiers) or "avg" (global average
            pooling, the classic CAM network's; the CPU recipes use it, see their notes).
        seed: seed of the local-crop sampling.
        **kwargs: `WSSSModel`'s `class_names`, `image_mean`, `image_std`, `recipe` (saved
            with the model) and `keras.Model`'s arguments.

    Example:
    >>> import numpy as np
    >>> encoder = ViTEncoder(patch_size=8, hidden_dim=32, num_layers=3, num_heads=2, mlp_dim=64, pos_embed_grid=4)
    >>> model = ToCo(encoder, num_classes=3, decoder_channels=16, projection=(32, 16, 32))
    >>> outputs = model(np.zeros((2, 32, 32, 3), "float32"))
    >>> tuple(outputs["logits"].shape), tuple(outputs["seg_logits"].shape)
    ((2, 3), (2, 4, 4, 4))
    """

    step_counter = "train_steps"  # advanced once per training batch (see pipelines.fitting.fit_steps)

    def __init__(
        self,
        encoder,
        num_classes,
        stem=None,
        aux_layer=-3,
        decoder_channels=512,
        decoder_dilation=5,
        projection=(2048, 256, 1024),
        losses=None,
        doei=None,
        max_steps=default_steps("toco", "train"),
        pooling="max",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(encoder, dict):
            encoder = keras.saving.deserialize_keras_object(encoder)
        if isinstance(stem, dict):
            stem = keras.saving.deserialize_keras_object(stem)
        if isinstance(doei, dict):
            from wsss_keras.methods.doei import DOEI

            doei = DOEI.from_config(doei)
        if not isinstance(encoder, ViTEncoder):
            raise ValueError(f"ToCo needs a ViTEncoder, got {type(encoder).__name__}.")
        if encoder.num_class_tokens != 1:
            raise ValueError(f"ToCo uses one class token; the encoder has {encoder.num_class_tokens}.")
        expected_channels = stem.output_channels if stem is not None else 3
        if encoder.image_channels != expected_channels:
            raise ValueError(
                f"The encoder takes {encoder.image_channels} input channels but the "
                f"{'stem gives' if stem is not None else 'images have'} {expected_channels}."
            )
        if not -encoder.num_layers <= int(aux_layer) < encoder.num_layers:
            raise ValueError(f"aux_layer={aux_layer} is outside the encoder's {encoder.num_layers} blocks.")
        self.encoder, self.stem, self.doei = encoder, stem, doei
        self.num_classes = int(num_classes)
        self.aux_layer = int(aux_layer)
        self.aux_index = self.aux_layer % encoder.num_layers
        self.decoder_channels, self.decoder_dilation = int(decoder_channels), int(decoder_dilation)
        self.projection = tuple(int(size) for size in projection)
        self.losses_config = toco_losses(losses)
        self.max_steps = int(max_steps)
        # Micro-batches per optimiser step under gradient accumulation (fit_steps sets it; not
        # saved): train_steps counts micro-batches, the loss starts count optimiser steps.
        self.accumulate = 1
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling={pooling!r}: choose 'max' (ToCo) or 'avg'.")
        self.pooling = pooling
        self.seed = seed
        self.classifier = keras.layers.Dense(self.num_classes, use_bias=False, name="classifier")
        self.aux_classifier = keras.layers.Dense(self.num_classes, use_bias=False, name="aux_classifier")
        self.decoder = LargeFOV(self.num_classes + 1, self.decoder_channels, self.decoder_dilation, name="decoder")
        # The CTC heads exist only when CTC is on (the CPU recipes turn it off).
        self.projection_head = self.teacher_head = None
        if self.losses_config["ctc_weight"]:
            self.projection_head = ProjectionHead(*self.projection, name="projection_head")
            self.teacher_head = ProjectionHead(*self.projection, name="teacher_head")
            self.teacher_head.trainable = False  # the setter reaches the sublayers; the EMA updates it
        self.crop_seed = keras.random.SeedGenerator(seed, name="crop_seed")
        terms = ["cls", "aux"] + [name for name in ("ptc", "ctc", "seg", "reg") if self.losses_config[f"{name}_weight"]]
        self.term_trackers = {name: keras.metrics.Mean(name=f"{name}_loss") for name in terms}

    @property
    def stride(self):
        """Pixels per token side: the patch size times the stem's stride."""
        return self.encoder.patch_size * (self.stem.stride if self.stem is not None else 1)

    def build(self, input_shape=None):
        if self.built:
            return
        width = self.encoder.hidden_dim
        # Sublayers rebuilt from a saved config may already be built.
        shapes = [
            (self.stem, (None, None, None, 3)), (self.encoder, None), (self.classifier, (None, width)),
            (self.aux_classifier, (None, width)), (self.decoder, (None, None, None, width)),
            (self.projection_head, (None, width)), (self.teacher_head, (None, width)),
        ]
        for layer, shape in shapes:
            if layer is not None and not layer.built:
                layer.build(shape)
        if self.projection_head is not None:
            for teacher, student in zip(self.teacher_head.weights, self.projection_head.weights):
                teacher.assign(ops.copy(student))  # a copy: JAX must not see one buffer twice
        self.train_steps = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False, name="train_steps")
        self.built = True

    def build_from_config(self, config):
        # Every variable's shape follows from the config, whatever the input size.
        self.build()

    # Forward passes ---------------------------------------------------------------------
    def encode(self, images, training=None, use_doei=True):
        """Final patch features (B, h, w, D) (after the final norm), auxiliary features
        (B, h, w, D) (raw tokens of the auxiliary block) and the final class token (B, D)."""
        images = ops.convert_to_tensor(images, self.compute_dtype)
        inputs = self.stem(images, training=training) if self.stem is not None else images
        tokens = self.encoder.embed(inputs)
        hook = None
        if self.doei is not None and use_doei:
            hook = self.doei.make_hook(
                tokens, denormalize_unit(images, self.image_mean, self.image_std, quantize=False), self.stride,
                self.encoder.num_class_tokens, self.encoder.num_layers, progress=self._progress(),
            )
        aux_tokens = None
        for index, block in enumerate(self.encoder.blocks):
            tokens, _ = block(tokens, hook=hook, block_index=index)
            if index == self.aux_index:
                aux_tokens = tokens
        final = self.encoder.norm(tokens)
        grid_h, grid_w = images.shape[1] // self.stride, images.shape[2] // self.stride
        width = self.encoder.hidden_dim
        features = ops.reshape(final[:, 1:], (-1, grid_h, grid_w, width))
        aux_features = ops.reshape(aux_tokens[:, 1:], (-1, grid_h, grid_w, width))
        return features, aux_features, final[:, 0]

    def _progress(self):
        if not self.built:
            return None
        return ops.minimum(ops.cast(self.optimizer_steps(), "float32") / float(max(self.max_steps, 1)), 1.0)

    def optimizer_steps(self):
        """Optimiser steps trained so far: `train_steps` over the micro-batches per step."""
        steps = ops.convert_to_tensor(self.train_steps)
        return steps if self.accumulate == 1 else steps // self.accumulate

    def call(self, images, training=None):
        features, aux_features, class_token = self.encode(images, training=training)
        return {
            "logits": self.classifier(self._pool(features)),
            "aux_logits": self.aux_classifier(self._pool(aux_features)),
            "seg_logits": self.decoder(features),
            "features": features,
            "aux_features": aux_features,
            "class_token": class_token,
        }

    def _pool(self, features):
        return ops.max(features, axis=(1, 2)) if self.pooling == "max" else ops.mean(features, axis=(1, 2))

    def cam_maps(self, images):
        return self.classifier(self.encode(images, training=False)[0])

    def cam_pair(self, images, training=False):
        """The final and auxiliary CAMs (B, h, w, C) of one forward pass."""
        features, aux_features, _ = self.encode(images, training=training)
        return self.classifier(features), self.aux_classifier(aux_features)

    def segment_logits(self, images):
        return self.decoder(self.encode(images, training=False)[0])

    # Training ----------------------------------------------------------------------------
    def _active(self, step, start):
        return ops.cast(step >= start, "float32")

    def _update_teacher(self):
        momentum = self.losses_config["ema_momentum"]
        for teacher, student in zip(self.teacher_head.weights, self.projection_head.weights):
            teacher.assign(momentum * teacher + (1.0 - momentum) * student)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        settings = self.losses_config
        if not isinstance(y, dict) or "labels" not in y:
            raise ValueError("ToCo trains on (images, targets) with targets a dict holding at least 'labels'.")
        images = ops.convert_to_tensor(x, "float32")
        height, width = images.shape[1], images.shape[2]
        labels = ops.cast(y["labels"], "float32")
        boxes = y.get("crop_boxes")
        if boxes is None:
            whole = ops.convert_to_tensor([[0, height, 0, width]], "int32")
            boxes = whole + ops.zeros_like(ops.cast(labels[:, :1], "int32"))
        step = self.optimizer_steps()
        high, low = settings["high_threshold"], settings["low_threshold"]

        if settings["cam_scales"] == [1.0] and not settings["cam_flip"]:
            # One view, the input itself: the main forward pass already holds its CAMs.
            cams, aux_cams = multiscale_cams(
                lambda view: (self.classifier(y_pred["features"]), self.aux_classifier(y_pred["aux_features"])),
                images, [1.0], False,
            )
        else:
            cams, aux_cams = multiscale_cams(
                lambda view: self.cam_pair(view, training=training), images, settings["cam_scales"], settings["cam_flip"]
            )
        cams, aux_cams = ops.stop_gradient(cams), ops.stop_gradient(aux_cams)

        terms = {
            "cls": multilabel_soft_margin_loss(labels, y_pred["logits"]),
            "aux": multilabel_soft_margin_loss(labels, y_pred["aux_logits"]),
        }
        weights = {"cls": settings["cls_weight"], "aux": settings["aux_weight"]}

        if settings["seg_weight"] or settings["reg_weight"]:
            dense = self._dense_terms(images, y_pred, cams, aux_cams, labels, boxes, step)
            if settings["seg_weight"]:
                terms["seg"] = dense["seg"]
                weights["seg"] = settings["seg_weight"] * self._active(step, settings["seg_start"])
            if settings["reg_weight"]:
                terms["reg"] = dense["reg"]
                weights["reg"] = settings["reg_weight"] * self._active(step, settings["reg_start"])

        if settings["ptc_weight"]:
            features = ops.cast(y_pred["features"], "float32")
            grid_h, grid_w = features.shape[1], features.shape[2]
            ptc_boxes = boxes
            if settings["ptc_box"] == "scaled":
                scale = ops.convert_to_tensor([grid_h / height, grid_h / height, grid_w / width, grid_w / width])
                ptc_boxes = ops.cast(ops.round(ops.cast(boxes, "float32") * scale), "int32")
            token_labels = cams_to_pseudo_labels(
                resize_bilinear(aux_cams, (grid_h, grid_w)), labels, high, low, crop_boxes=ptc_boxes
            )
            tokens = ops.reshape(features, (-1, grid_h * grid_w, features.shape[-1]))
            terms["ptc"] = patch_token_contrast_loss(tokens, label_affinity(token_labels))
            weights["ptc"] = settings["ptc_weight"] * self._active(step, settings["ptc_start"])

        if settings["ctc_weight"]:
            terms["ctc"] = self._ctc_loss(y, y_pred, aux_cams, labels, training)
            weights["ctc"] = settings["ctc_weight"] * self._active(step, settings["ctc_start"])

        total = 0.0
        for name, value in terms.items():
            total = total + weights[name] * value
            self.term_trackers[name].update_state(value)
        if training:
            self.train_steps.assign_add(1)
        return total

    def _dense_terms(self, images, y_pred, cams, aux_cams, labels, boxes, step):
        """The seg and reg terms, computed only from the first step either is active.

        PAR and the energy kernel are most of a step's cost, so before `seg_start` /
        `reg_start` they are skipped (`ops.cond`), not computed and multiplied by zero; their
        logged values read 0 until then.
        """
        settings = self.losses_config
        height, width = images.shape[1], images.shape[2]

        def compute():
            # Pseudo-labels feed the seg loss, and the reg loss's gate reads their ignore pixels.
            source = cams
            if settings["aux_pseudo_labels_until"] > 0:
                source = ops.where(step < settings["aux_pseudo_labels_until"], aux_cams, cams)
            rgb = denormalize_unit(images, self.image_mean, self.image_std, quantize=True)
            pseudo = ops.stop_gradient(refine_pseudo_labels(
                rgb, source, labels, settings["high_threshold"], settings["low_threshold"], crop_boxes=boxes,
                down_scale=settings["par_down_scale"], num_iter=settings["par_iterations"],
            ))
            seg_logits = resize_bilinear(ops.cast(y_pred["seg_logits"], "float32"), (height, width))
            seg = balanced_segmentation_loss(seg_logits, pseudo, guard_empty=settings["seg_guard_empty"])
            reg = ops.zeros((), "float32")
            if settings["reg_weight"]:
                roi = ops.cast(crop_box_mask(boxes, height, width), "float32")
                reg = settings["reg_energy_scale"] * dense_energy_loss(
                    rgb * 255.0, ops.softmax(seg_logits, axis=-1), roi, pseudo == 255,
                    sigma_rgb=settings["reg_sigma_rgb"], sigma_xy=settings["reg_sigma_xy"],
                    scale=settings["reg_scale"], max_pixels=settings["reg_max_pixels"],
                )
            return {"seg": ops.cast(seg, "float32"), "reg": ops.cast(reg, "float32")}

        starts = [settings[f"{name}_start"] for name in ("seg", "reg") if settings[f"{name}_weight"]]
        if min(starts) <= 0:
            return compute()
        return ops.cond(step >= min(starts), compute, lambda: {"seg": ops.zeros((), "float32"), "reg": ops.zeros((), "float32")})

    def _ctc_loss(self, y, y_pred, aux_cams, labels, training):
        settings = self.losses_config
        missing = [key for key in ("global_view", "local_source") if key not in y]
        if missing:
            raise ValueError(
                f"ToCo's CTC loss needs the extra views {missing} in the targets: train with "
                "`wsss_keras.data.transforms.ToCoTrainTransform`, or set losses.ctc_weight = 0."
            )
        use_doei = self.doei is None or self.doei.in_crop_passes
        count, size = settings["local_crops"], settings["local_crop_size"]
        source_h, source_w = y["local_source"].shape[1], y["local_source"].shape[2]
        if None not in (source_h, source_w) and (source_h - 2 * (size // 2)) * (source_w - 2 * (size // 2)) < count:
            # Else the crop centres fall outside the image (garbage crops or an index error).
            raise ValueError(
                f"losses.local_crop_size={size} leaves fewer than local_crops={count} crop centres inside "
                f"the {source_h}x{source_w} training crops; set local_crop_size well below the crop size "
                "(ToCo: 96 for 448)."
            )
        roi = uncertainty_roi(aux_cams, labels, settings["high_threshold"], settings["low_threshold"])
        local_source = ops.convert_to_tensor(y["local_source"], "float32")
        # Evaluation leaves the model as it was: the crop stream advances only in training
        # steps; an evaluation draws its crops from the fixed seed (the same crops every time).
        crop_seed = self.crop_seed if training else (0 if self.seed is None else int(self.seed))
        crops, local_positive = sample_local_crops(
            local_source, roi, count, size, settings["negative_ratio"], crop_seed
        )
        crops = ops.reshape(crops, (-1, size, size, crops.shape[-1]))
        second_token = self.encode(y["global_view"], training=training, use_doei=use_doei)[2]
        local_tokens = ops.reshape(self.encode(crops, training=training, use_doei=use_doei)[2], (-1, count, second_token.shape[-1]))
        global_tokens = ops.stack([y_pred["class_token"], second_token], axis=1)
        if training:  # the EMA is a training step's update (the reference moves it in its train loop)
            self._update_teacher()
        teacher = self.teacher_head(ops.stop_gradient(global_tokens))
        student = self.projection_head(ops.concatenate([global_tokens, local_tokens], axis=1))
        positive = ops.concatenate([ops.ones_like(global_tokens[:, :, 0]), local_positive], axis=1)
        return contrastive_token_loss(teacher, student, positive, settings["ctc_temperature"])

    # Serialisation -------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_classes=self.num_classes,
            stem=None if self.stem is None else keras.saving.serialize_keras_object(self.stem),
            aux_layer=self.aux_layer,
            decoder_channels=self.decoder_channels,
            decoder_dilation=self.decoder_dilation,
            projection=list(self.projection),
            losses={key: value for key, value in self.losses_config.items() if value != TOCO_LOSS_DEFAULTS[key]},
            doei=None if self.doei is None else self.doei.get_config(),
            max_steps=self.max_steps,
            pooling=self.pooling,
            seed=self.seed,
        )
        return config
