"""Run an exported `model.onnx` with onnxruntime, checked against its `manifest.json`.

No Keras or TensorFlow: numpy and onnxruntime (or onnxruntime-gpu, whose CUDA provider is used
when present) are enough. The server (`wsss_deploy.serve`) runs its batches through this.
"""

import os

import numpy as np

from wsss_deploy.manifest import ManifestError, file_sha256, read_manifest

ONNX_FILE = "model.onnx"


class ModelError(Exception):
    """The model file is missing, unreadable, or not the one its manifest describes."""


def choose_providers(provider="auto"):
    """onnxruntime execution providers: "auto" (CUDA when onnxruntime-gpu has it, then CPU),
    "cpu", or "cuda" (an error when this onnxruntime has no CUDA provider)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    if provider == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError(f"--provider cuda: this onnxruntime has only {available}; "
                             "install onnxruntime-gpu (`pip install \"wsss-keras[gpu]\"`) or use --provider cpu.")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if provider != "auto":
        raise ModelError(f"provider {provider!r}: choose auto, cpu or cuda.")
    return [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]


def find_model(path):
    """(model.onnx path, manifest) for an export folder or the .onnx file itself."""
    model = os.path.join(path, ONNX_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model):
        hint = " (an `onnx_fp32` folder that `wsss export --format onnx` wrote)" if os.path.isdir(path) else ""
        raise ModelError(f"{model}: no such file; give the folder holding model.onnx and manifest.json{hint}.")
    try:
        manifest = read_manifest(model)
    except ManifestError as error:
        raise ModelError(str(error)) from None
    artifact = manifest.get("artifact", {})
    if artifact.get("format") not in (None, "onnx", "triton"):  # Triton's repository holds an ONNX file
        raise ModelError(f"{model}: its manifest describes a {artifact.get('format')} artifact, not ONNX; "
                         "serve the onnx_* folder of the export.")
    return model, manifest


class OnnxSegmenter:
    """An exported `model.onnx` and its manifest, verified before use.

    Verifies that the file's SHA-256 is the manifest's (a replaced or corrupt file is refused),
    and that the graph takes the manifest's uint8 input and gives its outputs.

    Args:
        path: the export folder (model.onnx + manifest.json) or the .onnx file.
        provider: "auto", "cpu" or "cuda" (see `choose_providers`).
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        verify_hash: compare the file's SHA-256 with the manifest's.
        memory_arena: onnxruntime's CPU memory arena, which keeps every block it grew for later
            runs; the server turns it off, so the memory of a large image is freed after it.

    Example:
    >>> segmenter = OnnxSegmenter("exports/onnx_fp32")  # doctest: +SKIP
    >>> segmenter.run(np.zeros((1, 240, 320, 3), np.uint8))["labels"].shape  # doctest: +SKIP
    (1, 240, 320)
    """

    def __init__(self, path, provider="auto", threads=None, verify_hash=True, memory_arena=True):
        import onnxruntime

        self.path, self.manifest = find_model(path)
        expected = self.manifest.get("artifact", {}).get("sha256")
        if verify_hash and expected and file_sha256(self.path) != expected:
            raise ModelError(f"{self.path}: its SHA-256 is not the one in manifest.json ({expected[:12]}...): the file "
                             "was replaced or damaged after export; export it again or restore the matching pair.")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.enable_cpu_mem_arena = bool(memory_arena)
        try:
            self.session = onnxruntime.InferenceSession(self.path, options, providers=choose_providers(provider))
        except Exception as error:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({str(error).strip()[:300]}); "
                             "export the model again.") from None
        self.providers = self.session.get_providers()
        inputs = self.session.get_inputs()
        want = self.manifest["input"]
        if len(inputs) != 1 or inputs[0].name != want.get("name", "image") or inputs[0].type != "tensor(uint8)":
            found = [(i.name, i.type) for i in inputs]
            raise ModelError(f"{self.path}: the graph takes {found}, but the manifest says one uint8 input "
                             f"{want.get('name', 'image')!r}; the file and manifest do not belong together.")
        self.input_name = inputs[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        missing = [o["name"] for o in self.manifest["outputs"] if o["name"] not in self.output_names]
        if missing:
            raise ModelError(f"{self.path}: the manifest lists outputs {missing} that the graph lacks "
                             f"(it has {self.output_names}); the file and manifest do not belong together.")
        self.network_size = want.get("network_size")

    @property
    def classes(self):
        return list(self.manifest["classes"])

    @property
    def palette(self):
        return self.manifest["palette"]

    def run(self, images, outputs=None):
        """{output name: array} for uint8 RGB `images` (B, H, W, 3); `outputs` limits the names."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB images (B, H, W, 3); got shape {images.shape}.")
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, {self.input_name: images})))
