"""Reading the `manifest.json` that `wsss export` writes beside every artifact."""

import hashlib
import json
import os

MANIFEST_FILE = "manifest.json"


def file_sha256(path):
    """The SHA-256 the manifest records for an artifact (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ManifestError(Exception):
    """The manifest is missing or does not describe this artifact."""


def read_manifest(artifact):
    """The manifest beside `artifact` (a file, or a SavedModel folder), as a dict."""
    path = os.path.join(os.path.dirname(os.path.abspath(artifact)), MANIFEST_FILE)
    if not os.path.isfile(path):
        raise ManifestError(f"{path}: no manifest beside {artifact}; keep the manifest.json `wsss export` wrote with it.")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise ManifestError(f"{path}: not a readable manifest ({error}); export the model again.") from None
    for key in ("classes", "palette", "outputs", "input"):
        if key not in manifest:
            raise ManifestError(f"{path}: the manifest lacks {key!r}; export the model again with `wsss export`.")
    return manifest
