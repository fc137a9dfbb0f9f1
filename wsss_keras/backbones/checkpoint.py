"""Reading checkpoints from local files into NumPy, and strict matching against a model.

Formats: `.safetensors` (needs only numpy and the `safetensors` package), PyTorch pickles
`.pt/.pth/.bin` (need torch, the `torch` extra; read with `weights_only=True`, so no code in
the file runs), and `.npz`. Nothing is downloaded: every path is a local file.
"""

import os
import re
import warnings

import numpy as np

from wsss_keras.errors import WSSSError


class CheckpointError(WSSSError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


def read_state_dict(path):
    """Read a checkpoint file as a flat {name: numpy array} dict (float arrays kept as stored)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found.")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise CheckpointError(f"{path}: reading safetensors needs the package: pip install safetensors") from None
        try:
            return dict(load_file(path))
        except Exception as error:
            raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from None
    if extension == ".npz":
        return _read_npz(path)
    if extension in (".pt", ".pth", ".bin", ".ckpt"):
        return _read_torch_pickle(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint extension {extension!r}; expected .safetensors, .pt, .pth, .bin, .ckpt or .npz."
    )


def read_tensor_info(path):
    """{name: (shape, dtype name)} of a checkpoint file, with the dtypes as stored in the file
    (`read_state_dict` widens a PyTorch file's float16 and bfloat16 to float32)."""
    extension = os.path.splitext(path)[1].lower()
    if os.path.isfile(path) and extension in (".pt", ".pth", ".bin", ".ckpt"):
        return {
            name: (tuple(value.shape), str(value.dtype).removeprefix("torch."))
            for name, value in _load_torch_tensors(path).items()
        }
    return {name: (tuple(value.shape), str(value.dtype)) for name, value in read_state_dict(path).items()}


def _file_start(path, size=8):
    with open(path, "rb") as handle:
        return handle.read(size)


def _read_npz(path):
    # An .npz is a zip of .npy arrays; anything else gets one line saying so, not numpy's
    # advice to unpickle it (which would run code) or a zipfile traceback.
    start = _file_start(path)
    if not start:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a NumPy .npz archive; copy it again.")
    if start.startswith(b"\x93NUMPY"):
        raise CheckpointError(
            f"{path}: a single .npy array, not a NumPy .npz archive of named tensors; save the weights with numpy.savez."
        )
    if not start.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise CheckpointError(
            f"{path}: not a NumPy .npz archive (a zip of .npy arrays); save the weights with numpy.savez."
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise CheckpointError(
                f"{path}: holds pickled Python objects, not only numeric arrays, and is not loaded because "
                "unpickling can run code; save plain arrays with numpy.savez."
            ) from None
        raise CheckpointError(f"{path}: not a readable NumPy .npz archive ({_first_line(error)}); copy it again.") from None
    except Exception as error:  # zipfile.BadZipFile, EOFError, OSError, zlib.error on damaged files
        raise CheckpointError(
            f"{path}: a damaged or truncated NumPy .npz archive ({type(error).__name__}: {_first_line(error)}); "
            "copy it again."
        ) from None


def _first_line(error, limit=160):
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_sentence(error, limit=160):
    return _first_line(error, limit).split(". ")[0].rstrip(".")


def _torch_load_failure(path, error):
    """One line for a file torch.load refused: what the file is not, and what to do."""
    message = str(error)
    start = _file_start(path, 2)
    if start != b"PK" and start[:1] != b"\x80":
        return CheckpointError(
            f"{path}: not a PyTorch checkpoint: it starts with neither torch.save's zip header nor a pickle "
            "header; copy it again or check what the file is."
        )
    if "Weights only load failed" in message:
        # torch's message spans several lines; the offending global (or opcode) is the useful part.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", message) or re.search(r"WeightsUnpickler error:\s*(.+)", message)
        detail = found.group(1).strip() if found else "an object torch does not load safely"
        return CheckpointError(
            f"{path}: not a plain PyTorch state dict: it holds Python objects ({detail}) that loading without "
            "running code refuses; re-save only the tensors (torch.save(model.state_dict(), ...)) "
            "or convert the file to .safetensors."
        )
    what = "zip archive (torch.save's format)" if start == b"PK" else "pickle (torch.save's legacy format)"
    detail = f"{type(error).__name__}: {_first_sentence(message)}" if message else type(error).__name__
    return CheckpointError(f"{path}: a damaged or truncated {what} ({detail}); copy it again.")


def _read_torch_pickle(path):
    tensors = _load_torch_tensors(path)  # first: it names the missing torch in one line
    import torch

    state = {}
    for name, value in tensors.items():
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()  # NumPy has no bfloat16; the models compute in float32 anyway
        state[name] = value.numpy()
    return state


def _load_torch_tensors(path):
    """{name: CPU torch tensor} of a PyTorch checkpoint, as stored (unwrapped from common containers)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: PyTorch checkpoints need torch: pip install 'wsss-keras[torch]', "
            "or convert the file to .safetensors first."
        ) from None
    if not _file_start(path):
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a PyTorch checkpoint; copy it again.")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing or not
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # TorchScript archives (OpenAI CLIP's released .pt files) are not plain pickles.
        try:
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        except Exception:
            raise _torch_load_failure(path, error) from None
    for key in ("state_dict", "model", "teacher", "module"):  # common wrappers around the weights
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), found {type(obj).__name__}.")
    return {name: value.detach().cpu() for name, value in obj.items() if hasattr(value, "detach")}


def strip_prefix(state, prefixes):
    """Remove the first matching prefix (e.g. "module.", "backbone.") from every key that has it."""
    out = {}
    for name, value in state.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = value
    return out


def check_shapes(expected, state, source, ignore_unexpected=()):
    """Raise a CheckpointError that lists every missing, unexpected and mis-shaped key.

    Args:
        expected: {name: shape} the model needs.
        state: {name: array} read from the checkpoint.
        source: the file (or folder) name used in the message.
        ignore_unexpected: key prefixes that may be present but are not used (e.g. a classifier
            head when only the encoder is imported).
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(
        name for name in set(state) - set(expected) if not name.startswith(tuple(ignore_unexpected))
    )
    wrong = sorted(
        (name, tuple(state[name].shape), tuple(shape))
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != tuple(shape)
    )
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): " + ", ".join(_shown(missing)))
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(_shown(unexpected)))
    if wrong:
        parts.append(
            f"wrong shapes ({len(wrong)}): "
            + ", ".join(f"{name} is {got}, model needs {need}" for name, got, need in wrong[:10])
        )
    raise CheckpointError(
        f"{source}: checkpoint does not match the architecture; " + "; ".join(parts)
        + ". Check --arch (depth, width, patch size) against the checkpoint (`wsss weights inspect`)."
    )


def _shown(names, limit=10):
    return names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])
