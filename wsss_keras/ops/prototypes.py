"""SSR's cross-modal prototype alignment (CMPA): pooled foreground features, the prototype
contrastive loss, and the image-prototype bank.

Spec methods/ssr.md §2.5 (paper Eq. 1-6; shapes and details are the spec's interpretation):

- `masked_average_pool` pools per-token features into one foreground feature per class, the
  detached CAM as soft weights.
- `prototype_contrastive_loss` is cross-entropy over the C text prototypes of the cosine
  similarities times 1/τ (clamped at 100), optionally with extra negative rows; the positive
  is the sample's class ("label") or its nearest image prototype ("cluster", the paper-literal
  cluster pseudo-label). `text_to_image_loss` is the spec's optional symmetric L_t2i.
- `spherical_kmeans` and `PrototypeBank` (NumPy, outside the compiled step) build the image
  prototypes P_I: detached foreground features per class (all, or a FIFO of the last few), clustered with
  cosine K-means whose centroid k starts at the class-k mean, so cluster k stays class k and
  lines up with text prototype k.
"""

import numpy as np
from keras import ops

# Pooling denominator guard, the spec's 1e-5: an all-zero CAM pools to a zero vector.
POOL_EPS = 1e-5
# Cosine norms are max(||x||, 1e-8), taken before the square root, so a zero vector has a
# finite (zero) gradient instead of 0 · inf.
NORM_EPS = 1e-8
MAX_INVERSE_TEMPERATURE = 100.0
POS_IDX_MODES = ("label", "cluster")
# Size of the fixed nudge that separates the fallback centroids of classes without samples.
FALLBACK_NUDGE = 1e-3


def masked_average_pool(features, cams, eps=POOL_EPS):
    """Per-class foreground features by CAM-weighted average pooling.

    Args:
        features: (B, N, D) per-token features.
        cams: (B, N, C) non-negative soft weights (the detached initial CAMs).
        eps: added to the weight sums.

    Returns:
        (B, C, D): sum_p cam[b, p, c] · features[b, p] / (sum_p cam[b, p, c] + eps).

    Example:
    >>> import numpy as np
    >>> features = np.array([[[1.0, 0.0], [0.0, 1.0]]], "float32")
    >>> cams = np.array([[[1.0], [3.0]]], "float32")
    >>> np.round(np.asarray(masked_average_pool(features, cams, eps=0.0)), 3).tolist()
    [[[0.25, 0.75]]]
    """
    features = ops.convert_to_tensor(features)
    cams = ops.cast(cams, features.dtype)
    if len(features.shape) != 3 or len(cams.shape) != 3:
        raise ValueError(f"masked_average_pool needs features (B, N, D) and cams (B, N, C), got {tuple(features.shape)} and {tuple(cams.shape)}.")
    sums = ops.einsum("bpc,bpd->bcd", cams, features)
    weights = ops.sum(cams, axis=1)[:, :, None]
    return sums / (weights + eps)


def _normalize(tensor):
    squared = ops.sum(ops.square(tensor), axis=-1, keepdims=True)
    return tensor / ops.sqrt(ops.maximum(squared, NORM_EPS * NORM_EPS))


def prototype_contrastive_loss(image_features, labels, text_prototypes, inverse_temperature, image_prototypes=None,
                               pos_idx_mode="label", negatives=None):
    """L_proto: cross-entropy of each present (image, class) feature over the text prototypes.

    z[b, c, k] = cos(f[b, c], P_T[k]) · min(1/τ, 100), k over the C prototypes and then the
    `negatives` rows if any; the positive index is c ("label") or argmax_k cos(f[b, c], P_I[k])
    ("cluster"), always a class prototype; the loss is the mean of -log softmax(z)[pos]
    over the samples with labels[b, c] = 1, and exactly 0 (with zero gradients) when there is
    none. Cosines use max(||x||, 1e-8) norms, so a zero feature (an all-zero CAM) gives
    z = 0, a finite loss and finite gradients.

    Args:
        image_features: (B, C, D) pooled foreground features (need not be normalised).
        labels: (B, C) multi-hot 0 / 1: which samples exist.
        text_prototypes: (C, D), P_T (live TSA output: gradients flow into it).
        inverse_temperature: scalar tensor 1/τ (e.g. exp of a learnable log); clamped at 100.
        image_prototypes: (C, D) P_I, for "cluster" mode (treated as constant).
        pos_idx_mode: "label" or "cluster".
        negatives: optional (M, D) rows that only enter the softmax's denominator (SSR's
            background prompts through TSA).

    Returns:
        Scalar loss.

    Example:
    >>> import numpy as np
    >>> prototypes = np.eye(2, dtype="float32")
    >>> features = np.array([[[1.0, 0.0], [0.0, 0.0]]], "float32")
    >>> loss = prototype_contrastive_loss(features, np.array([[1.0, 0.0]], "float32"), prototypes, 1.0)
    >>> round(float(loss), 4) == round(float(np.log(1 + np.exp(-1.0))), 4)
    True
    """
    if pos_idx_mode not in POS_IDX_MODES:
        raise ValueError(f"unknown pos_idx_mode {pos_idx_mode!r}; use one of {POS_IDX_MODES}.")
    if pos_idx_mode == "cluster" and image_prototypes is None:
        raise ValueError("pos_idx_mode 'cluster' needs image_prototypes (the bank's P_I); give them or use pos_idx_mode 'label'.")
    features = ops.convert_to_tensor(image_features)
    if not str(features.dtype).startswith(("float", "bfloat")):
        features = ops.cast(features, "float32")
    labels = ops.cast(labels, features.dtype)
    prototypes = ops.cast(text_prototypes, features.dtype)
    if len(features.shape) != 3 or len(labels.shape) != 2 or len(prototypes.shape) != 2:
        raise ValueError(
            "prototype_contrastive_loss needs image_features (B, C, D), labels (B, C), text_prototypes (C, D); "
            f"got {tuple(features.shape)}, {tuple(labels.shape)}, {tuple(prototypes.shape)}."
        )
    classes = features.shape[1]
    if prototypes.shape[0] is not None and classes is not None and prototypes.shape[0] != classes:
        raise ValueError(f"{prototypes.shape[0]} text prototypes for {classes} classes of features; give one prototype per class.")
    unit = _normalize(features)
    scale = ops.minimum(ops.cast(inverse_temperature, features.dtype), MAX_INVERSE_TEMPERATURE)
    logits = ops.einsum("bcd,kd->bck", unit, _normalize(prototypes)) * scale
    if negatives is not None:
        negatives = ops.cast(negatives, features.dtype)
        if len(negatives.shape) != 2 or negatives.shape[-1] != prototypes.shape[-1]:
            raise ValueError(f"negatives {tuple(negatives.shape)} must be (M, {prototypes.shape[-1]}), like the text prototypes.")
        negative_logits = ops.einsum("bcd,md->bcm", unit, _normalize(negatives)) * scale
    if pos_idx_mode == "label":
        positive = ops.eye(ops.shape(prototypes)[0], dtype=features.dtype)[None]
    else:
        bank = ops.cast(image_prototypes, features.dtype)
        if tuple(bank.shape) != tuple(prototypes.shape):
            raise ValueError(f"image_prototypes {tuple(bank.shape)} must match text_prototypes {tuple(prototypes.shape)} (one per class).")
        bank = ops.stop_gradient(_normalize(bank))
        nearest = ops.argmax(ops.einsum("bcd,kd->bck", ops.stop_gradient(unit), bank), axis=-1)
        positive = ops.one_hot(nearest, ops.shape(prototypes)[0], dtype=features.dtype)
    positive_logit = ops.sum(logits * positive, axis=-1)
    if negatives is not None:
        logits = ops.concatenate([logits, negative_logits], axis=-1)
    per_sample = ops.logsumexp(logits, axis=-1) - positive_logit
    count = ops.sum(labels)
    return ops.sum(per_sample * labels) / ops.maximum(count, 1.0)


def text_to_image_loss(text_prototypes, image_prototypes, inverse_temperature):
    """L_t2i, the spec's optional symmetric term (not in the paper's equations): each text
    prototype's cross-entropy over the image prototypes, its own class the positive.

    z[k, j] = cos(P_T[k], P_I[j]) · min(1/τ, 100); the loss is mean_k -log softmax(z[k])[k].
    P_I is a constant (gradients reach TSA and τ only).

    Example:
    >>> import numpy as np
    >>> loss = text_to_image_loss(np.eye(2, dtype="float32"), np.eye(2, dtype="float32"), 1.0)
    >>> round(float(loss), 4) == round(float(np.log(1 + np.exp(-1.0))), 4)
    True
    """
    text = ops.convert_to_tensor(text_prototypes)
    if not str(text.dtype).startswith(("float", "bfloat")):
        text = ops.cast(text, "float32")
    images = ops.stop_gradient(_normalize(ops.cast(image_prototypes, text.dtype)))
    if tuple(images.shape) != tuple(text.shape):
        raise ValueError(f"image_prototypes {tuple(images.shape)} must match text_prototypes {tuple(text.shape)} (one per class).")
    scale = ops.minimum(ops.cast(inverse_temperature, text.dtype), MAX_INVERSE_TEMPERATURE)
    logits = ops.matmul(_normalize(text), ops.transpose(images)) * scale
    positive = ops.sum(logits * ops.eye(ops.shape(text)[0], dtype=text.dtype), axis=-1)
    return ops.mean(ops.logsumexp(logits, axis=-1) - positive)


def _unit_rows(array):
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, NORM_EPS)


def spherical_kmeans(features, labels, num_classes, iterations=20, previous=None):
    """Cosine K-means with K = num_classes whose centroid k starts at the class-k mean.

    Initialisation: centroid k = the normalised mean of the normalised class-k samples; for a
    class with no sample, `previous[k]` when given, else the normalised global mean plus
    1e-3 · e_(k mod D) (a fixed, class-specific nudge, so such centroids are distinct and the
    result deterministic). Then `iterations` Lloyd steps: assign each sample to the centroid
    of highest cosine, re-estimate each centroid as its members' normalised mean; an empty
    cluster keeps its centroid.

    Args:
        features: (S, D) array.
        labels: (S,) int class ids in [0, num_classes).
        num_classes: C.
        iterations: Lloyd steps.
        previous: optional (C, D) prototypes from the last refresh.

    Returns:
        (C, D) float32 unit vectors; row k belongs to class k.

    Example:
    >>> import numpy as np
    >>> features = np.array([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0]])
    >>> np.round(spherical_kmeans(features, np.array([0, 0, 1]), 2).astype("float64"), 3).tolist()
    [[1.0, 0.0], [0.1, 0.995]]
    """
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    num_classes = int(num_classes)
    if features.ndim != 2 or len(labels) != len(features):
        raise ValueError(f"spherical_kmeans needs features (S, D) and labels (S,), got {features.shape} and {labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}].")
    if previous is not None:
        previous = np.asarray(previous, np.float64)
        if previous.shape != (num_classes, features.shape[1]):
            raise ValueError(f"previous prototypes must be ({num_classes}, {features.shape[1]}), got {previous.shape}.")
    if len(features) == 0:
        if previous is None:
            raise ValueError("spherical_kmeans got no features and no previous prototypes; collect samples first.")
        return _unit_rows(previous).astype(np.float32)
    unit = _unit_rows(features)
    dim = unit.shape[1]
    centroids = np.empty((num_classes, dim))
    global_mean = _unit_rows(unit.mean(axis=0))
    for k in range(num_classes):
        members = unit[labels == k]
        if len(members):
            centroids[k] = _unit_rows(members.mean(axis=0))
        elif previous is not None:
            centroids[k] = _unit_rows(previous[k])
        else:
            nudge = np.zeros(dim)
            nudge[k % dim] = FALLBACK_NUDGE
            centroids[k] = _unit_rows(global_mean + nudge)
    for _ in range(int(iterations)):
        assignment = np.argmax(unit @ centroids.T, axis=1)
        for k in range(num_classes):
            members = unit[assignment == k]
            if len(members):
                centroids[k] = _unit_rows(members.mean(axis=0))
    return centroids.astype(np.float32)


def _to_numpy(array):
    if isinstance(array, np.ndarray):
        return array
    return np.asarray(ops.convert_to_numpy(ops.stop_gradient(array)))


class PrototypeBank:
    """FIFO memory of detached foreground features per class, clustered into image prototypes.

    Runs outside the compiled step (NumPy): feed it the pooled features a training step
    returns, and `refresh` every so many iterations (5,000 in the spec).

    Args:
        num_classes: C.
        per_class: the most samples kept per class (oldest dropped first); None keeps all
            (SSR's "epoch" bank, the whole training set).

    Example:
    >>> import numpy as np
    >>> bank = PrototypeBank(num_classes=2, per_class=3)
    >>> bank.add(np.ones((4, 2, 5), "float32"), np.array([[1, 0]] * 4))
    >>> len(bank), bank.refresh(previous=np.eye(2, 5)).shape
    (3, (2, 5))
    """

    def __init__(self, num_classes, per_class=200):
        if int(num_classes) < 1 or (per_class is not None and int(per_class) < 1):
            raise ValueError(f"PrototypeBank needs num_classes >= 1 and per_class >= 1 (or None), got {num_classes} and {per_class}.")
        self.num_classes = int(num_classes)
        self.per_class = None if per_class is None else int(per_class)
        self.dim = None
        # Per class, the kept samples oldest first (unit rows, float32).
        self._samples = [None] * self.num_classes
        self.prototypes = None

    def __len__(self):
        return sum(0 if samples is None else len(samples) for samples in self._samples)

    def counts(self):
        """(C,) int: samples held per class."""
        return np.array([0 if samples is None else len(samples) for samples in self._samples], np.int64)

    def add(self, features, labels):
        """Append the present samples: features (B, C, D), labels (B, C) multi-hot (arrays or
        eager tensors). Rows are L2-normalised and stored as float32."""
        features = _to_numpy(features).astype(np.float32)
        labels = _to_numpy(labels)
        if features.ndim != 3 or features.shape[1] != self.num_classes or labels.shape != features.shape[:2]:
            raise ValueError(
                f"PrototypeBank.add needs features (B, {self.num_classes}, D) and labels (B, {self.num_classes}), "
                f"got {features.shape} and {labels.shape}."
            )
        self._check_dim(features.shape[2])
        unit = _unit_rows(features).astype(np.float32)
        for k in range(self.num_classes):
            self._append(k, unit[labels[:, k] > 0, k])

    def add_samples(self, features, class_ids):
        """Append samples given one per row: features (S, D), class_ids (S,) in [0, C)."""
        features = _to_numpy(features).astype(np.float32)
        class_ids = np.asarray(_to_numpy(class_ids)).astype(np.int64).reshape(-1)
        if features.ndim != 2 or len(class_ids) != len(features):
            raise ValueError(f"PrototypeBank.add_samples needs features (S, D) and class_ids (S,), got {features.shape} and {class_ids.shape}.")
        if len(class_ids) and (class_ids.min() < 0 or class_ids.max() >= self.num_classes):
            raise ValueError(f"class ids must lie in [0, {self.num_classes}), got [{class_ids.min()}, {class_ids.max()}].")
        self._check_dim(features.shape[1])
        unit = _unit_rows(features).astype(np.float32)
        for k in range(self.num_classes):
            self._append(k, unit[class_ids == k])

    def _check_dim(self, dim):
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise ValueError(f"PrototypeBank holds {self.dim}-d features, got {dim}-d ones.")

    def _append(self, k, new):
        if not len(new):
            return
        kept = new if self._samples[k] is None else np.concatenate([self._samples[k], new])
        self._samples[k] = kept if self.per_class is None else kept[-self.per_class :]

    def samples(self):
        """(features (S, D) float32, labels (S,) int64): everything held, class by class,
        oldest first within a class."""
        dim = 0 if self.dim is None else self.dim
        held = [(k, samples) for k, samples in enumerate(self._samples) if samples is not None]
        if not held:
            return np.zeros((0, dim), np.float32), np.zeros((0,), np.int64)
        features = np.concatenate([samples for _, samples in held])
        labels = np.concatenate([np.full(len(samples), k, np.int64) for k, samples in held])
        return features, labels

    def refresh(self, previous=None, iterations=20):
        """Recluster the bank: `spherical_kmeans` prototypes (C, D) float32, also kept as
        `self.prototypes`. `previous` (default: the last refresh's) seeds classes without
        samples; an empty bank returns `previous` and without one raises ValueError."""
        previous = self.prototypes if previous is None else previous
        features, labels = self.samples()
        if not len(features) and previous is None:
            raise ValueError("PrototypeBank.refresh on an empty bank with no previous prototypes; add samples first.")
        if not len(features):
            features = np.zeros((0, np.asarray(previous).shape[1]), np.float32)
        self.prototypes = spherical_kmeans(features, labels, self.num_classes, iterations=iterations, previous=previous)
        return self.prototypes

    def state(self):
        """A dict of arrays for `np.savez`: features, labels, num_classes, per_class (-1: no
        cap), and prototypes when a refresh has run."""
        features, labels = self.samples()
        state = {
            "features": features,
            "labels": labels,
            "num_classes": np.array(self.num_classes, np.int64),
            "per_class": np.array(-1 if self.per_class is None else self.per_class, np.int64),
        }
        if self.prototypes is not None:
            state["prototypes"] = np.asarray(self.prototypes, np.float32)
        return state

    @classmethod
    def from_state(cls, state):
        """The bank `state()` described (a dict or a loaded `.npz`)."""
        missing = [key for key in ("features", "labels", "num_classes", "per_class") if key not in state]
        if missing:
            raise ValueError(f"prototype bank state lacks {missing}; save it with PrototypeBank.state().")
        per_class = int(state["per_class"])
        bank = cls(int(state["num_classes"]), None if per_class < 0 else per_class)
        features = np.asarray(state["features"], np.float32)
        labels = np.asarray(state["labels"], np.int64)
        if features.ndim != 2 or labels.shape != (len(features),):
            raise ValueError(f"prototype bank state has features {features.shape} and labels {labels.shape}; expected (S, D) and (S,).")
        if features.shape[1] or len(features):
            bank.dim = features.shape[1]
        for k in range(bank.num_classes):
            rows = features[labels == k]
            if len(rows):
                bank._samples[k] = rows if bank.per_class is None else rows[-bank.per_class :]
        if "prototypes" in state:
            bank.prototypes = np.asarray(state["prototypes"], np.float32)
        return bank
