"""Class-prompt text embeddings for CLIP, computed once and cached.

WeCLIP/CLIP-ES's `zeroshot_classifier`: for each class name, fill every template, encode,
L2-normalise each prompt embedding, average over templates, L2-normalise again. The result
never changes for a given model, so it is cached in memory and, optionally, in an `.npy`
file whose name holds a hash of the prompts and of the weights.
"""

import hashlib
import json
import os

import numpy as np

_MEMORY_CACHE = {}
_FILE_DIGESTS = {}


def _file_digest(path):
    """SHA-256 of a weights file (or of every file in a preset folder), memoised per path and mtime."""
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    if not paths:
        raise FileNotFoundError(f"{path}: weights file or folder not found.")
    key = tuple((p, os.path.getsize(p), os.path.getmtime(p)) for p in paths)
    if key not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as file:
                for chunk in iter(lambda: file.read(1 << 22), b""):
                    digest.update(chunk)
        _FILE_DIGESTS[key] = digest.hexdigest()
    return _FILE_DIGESTS[key]


def _weights_digest(text_encoder):
    import keras

    digest = hashlib.sha256()
    for weight in text_encoder.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value)).tobytes())
    return digest.hexdigest()


def prompt_cache_key(class_names, templates, weights_digest):
    """The hex key of one (prompts, weights) pair."""
    payload = json.dumps({"names": list(class_names), "templates": list(templates), "weights": weights_digest})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def embed_class_prompts(model, tokenizer, class_names, templates=("a clean origami {}.",), cache_dir=None,
                        weights_file=None, batch_size=64):
    """`(len(class_names), output_dim)` float32 unit-norm text embeddings of the class prompts.

    Args:
        model: a `CLIP` (or a `CLIPTextEncoder`).
        tokenizer: a `CLIPTokenizer`.
        class_names: list of names; each may hold synonyms verbatim, e.g.
            "person with clothes,people,human".
        templates: format strings with one `{}`; WeCLIP uses the single "a clean origami {}.".
        cache_dir: optional folder for a `clip_prompts_<key>.npy` file.
        weights_file: optional path of the weights the model was loaded from; its content
            hash keys the cache (otherwise the text tower's variables are hashed).
        batch_size: prompts per forward pass.

    Returns:
        np.ndarray float32 `(classes, output_dim)`, rows of unit L2 norm.

    Example:
    ```python
    text = embed_class_prompts(clip, tokenizer, ["aeroplane", "bicycle"], cache_dir="runs/cache")
    ```
    """
    import keras

    text_encoder = getattr(model, "text_encoder", model)
    class_names, templates = list(class_names), list(templates)
    if not class_names or not templates:
        raise ValueError("embed_class_prompts needs at least one class name and one template.")
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"Prompt template {template!r} must contain exactly one '{{}}'.")
    weights = _file_digest(weights_file) if weights_file else _weights_digest(text_encoder)
    key = prompt_cache_key(class_names, templates, weights)
    if key in _MEMORY_CACHE:
        return _MEMORY_CACHE[key].copy()
    path = os.path.join(cache_dir, f"clip_prompts_{key}.npy") if cache_dir else None
    if path and os.path.isfile(path):
        embeddings = np.load(path)
    else:
        prompts = [template.format(name) for name in class_names for template in templates]
        token_ids = tokenizer(prompts)
        rows = []
        for start in range(0, len(prompts), batch_size):
            batch = text_encoder(token_ids[start: start + batch_size])["text_embedding"]
            rows.append(keras.ops.convert_to_numpy(batch).astype(np.float64))
        features = np.concatenate(rows).reshape(len(class_names), len(templates), -1)
        features /= np.linalg.norm(features, axis=-1, keepdims=True)
        embeddings = features.mean(axis=1)
        embeddings = (embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)).astype(np.float32)
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            np.save(path, embeddings)
    _MEMORY_CACHE[key] = embeddings
    return embeddings.copy()
