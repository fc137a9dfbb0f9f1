"""Random-valued checkpoints in the genuine on-disk formats the recipes name (issue #24 item 3).

    python bench/fake_checkpoints.py OUT_DIR [--only NAME,...] [--seed 0] [--clip-fp16] [--list]

Each file has the real release's file name, container format, key names (in the release's
order), shapes and dtypes; only the values are random (seeded, float32 unless noted, small
normal weights, LayerNorm/BatchNorm gains near 1, positive BatchNorm running variances). They
exercise every importer and the full-size stages of a paper recipe without downloading
anything. Nothing here imports wsss_keras: the layouts are written out from the architectures
(torchvision is not needed), so a test can compare an importer's result against them.

| name | file | container |
|---|---|---|
| vit_b16 | vit_base_patch16_224.orig_in21k_ft_in1k.safetensors | timm's hub safetensors (metadata format=pt), with the 1000-class head |
| clip_vit_b16 | ViT-B-16.pt | OpenAI's TorchScript archive (torch.jit.save of a scripted module) |
| clip_bpe | bpe_simple_vocab_16e6.txt.gz | OpenAI's gzip merges file: a header line, then "a b" merges |
| dino_vits16 | dino_deitsmall16_pretrain.pth | torch.save (zip) of a plain state dict, no head |
| resnet50 | resnet50-19c8e357.pth | torch.save legacy (non-zip) pickle of a plain state dict |
| resnet101 | resnet101-5d3b4d8f.pth | as resnet50 |
| vgg19 | vgg19-dcbb9e9d.pth | as resnet50 |

Notes on fidelity:
- torchvision's 2017 files (resnet50-19c8e357, resnet101-5d3b4d8f, vgg19-dcbb9e9d) were saved
  before PyTorch 0.4.1 added BatchNorm's `num_batches_tracked`, so they have none, and they
  use torch.save's legacy pickle container (the zip container came with PyTorch 1.6); the
  fakes do the same. `--num-batches-tracked` adds the counters (int64 scalars) as the newer
  torchvision files (resnet50-0676ba61, resnet101-63fe2227) have them.
- OpenAI's archive holds three int64 scalar buffers (input_resolution, context_length,
  vocab_size) next to the weights, as clip.model.build_model expects. Its released weights
  are half precision where clip.model.convert_weights makes them so (conv, linear and
  attention projections, `proj`, `text_projection`); `--clip-fp16` writes those as float16,
  the default writes float32 everywhere.
- The BPE file has the real header and line count (262,144 merges); OpenAI's tokenizer uses
  the first 48,894. Every merge joins two tokens that exist already and makes a new token;
  the first ones spell a few prompt words (VOC class names, "a clean origami", ...) so those
  tokenise to one id each, the rest are random.

A value of any tensor can be regenerated alone: `fake_value(key, shape, kind, seed)` depends
only on its arguments (`layout(name)` gives each key's shape and kind).
"""

import argparse
import collections
import gzip
import math
import os
import random
import sys
import time
import zlib

import numpy as np

FILES = {
    "vit_b16": "vit_base_patch16_224.orig_in21k_ft_in1k.safetensors",
    "clip_vit_b16": "ViT-B-16.pt",
    "clip_bpe": "bpe_simple_vocab_16e6.txt.gz",
    "dino_vits16": "dino_deitsmall16_pretrain.pth",
    "resnet50": "resnet50-19c8e357.pth",
    "resnet101": "resnet101-5d3b4d8f.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
}
# Each checkpoint's arch in wsss_keras.backbones.registry (VGG-19 is no registry arch: the SSC
# loss network loads it through backbones.vgg).
ARCHS = {"vit_b16": "vit_b16", "clip_vit_b16": "clip_vit_b16", "dino_vits16": "dino_vits16",
         "resnet50": "resnet50", "resnet101": "resnet101", "vgg19": None}

BPE_HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2'
BPE_MERGES = 262144
OPENAI_MERGES_USED = 49152 - 256 - 2  # 48,894: what clip/simple_tokenizer.py reads
CLIP_SCALARS = {"input_resolution": 224, "context_length": 77, "vocab_size": 49408}
PROMPT_WORDS = (
    "a clean origami photo of the background aeroplane bicycle bird boat bottle bus car cat chair cow "
    "diningtable dining table dog horse motorbike person pottedplant potted plant sheep sofa train tvmonitor tv "
    "monitor ground land grass tree building wall sky lake water river sea railway railroad keyboard helmet cloud "
    "house mountain ocean road rock street valley bridge sign"
).split()

# --------------------------------------------------------------------------- layouts
# A layout is an ordered list of (key, shape, kind); kinds say how a value is drawn (fake_value).


def _linear(prefix, out_features, in_features, bias=True):
    entries = [(f"{prefix}.weight", (out_features, in_features), "weight")]
    return entries + ([(f"{prefix}.bias", (out_features,), "bias")] if bias else [])


def _norm(prefix, channels):
    return [(f"{prefix}.weight", (channels,), "gain"), (f"{prefix}.bias", (channels,), "bias")]


def _timm_vit(dim, depth, mlp, head=None):
    """timm's VisionTransformer (and DINO's, which has the same names) at patch 16, 224 px."""
    entries = [("cls_token", (1, 1, dim), "weight"), ("pos_embed", (1, 197, dim), "weight"),
               ("patch_embed.proj.weight", (dim, 3, 16, 16), "weight"), ("patch_embed.proj.bias", (dim,), "bias")]
    for index in range(depth):
        block = f"blocks.{index}"
        entries += _norm(f"{block}.norm1", dim)
        entries += _linear(f"{block}.attn.qkv", 3 * dim, dim) + _linear(f"{block}.attn.proj", dim, dim)
        entries += _norm(f"{block}.norm2", dim)
        entries += _linear(f"{block}.mlp.fc1", mlp, dim) + _linear(f"{block}.mlp.fc2", dim, mlp)
    entries += _norm("norm", dim)
    if head:
        entries += _linear("head", head, dim)
    return entries


def _openai_blocks(prefix, dim, depth):
    entries = []
    for index in range(depth):
        block = f"{prefix}.resblocks.{index}"
        entries += [(f"{block}.attn.in_proj_weight", (3 * dim, dim), "weight"),
                    (f"{block}.attn.in_proj_bias", (3 * dim,), "bias")]
        entries += _linear(f"{block}.attn.out_proj", dim, dim)
        entries += _norm(f"{block}.ln_1", dim)
        entries += _linear(f"{block}.mlp.c_fc", 4 * dim, dim) + _linear(f"{block}.mlp.c_proj", dim, 4 * dim)
        entries += _norm(f"{block}.ln_2", dim)
    return entries


def _openai_clip_b16():
    """clip.model.CLIP(embed_dim=512, 224, vision 12 x 768 patch 16, context 77, vocab 49408, text 12 x 512 x 8 heads),
    in its state_dict order: own parameters, own buffers, then the children as registered."""
    entries = [("positional_embedding", (77, 512), "weight"), ("text_projection", (512, 512), "weight"),
               ("logit_scale", (), "logit_scale")]
    entries += [(name, (), "int") for name in CLIP_SCALARS]
    entries += [("visual.class_embedding", (768,), "weight"), ("visual.positional_embedding", (197, 768), "weight"),
                ("visual.proj", (768, 512), "weight"), ("visual.conv1.weight", (768, 3, 16, 16), "weight")]
    entries += _norm("visual.ln_pre", 768) + _openai_blocks("visual.transformer", 768, 12) + _norm("visual.ln_post", 768)
    entries += _openai_blocks("transformer", 512, 12)
    entries += [("token_embedding.weight", (49408, 512), "weight")] + _norm("ln_final", 512)
    return entries


def _batchnorm(prefix, channels, tracked, gain="gain"):
    entries = [(f"{prefix}.weight", (channels,), gain), (f"{prefix}.bias", (channels,), "bias"),
               (f"{prefix}.running_mean", (channels,), "running_mean"),
               (f"{prefix}.running_var", (channels,), "running_var")]
    return entries + ([(f"{prefix}.num_batches_tracked", (), "count")] if tracked else [])


def _torchvision_resnet(blocks, tracked=False):
    """torchvision.models.resnet (Bottleneck, V1: stride on conv2) state_dict order."""
    entries = [("conv1.weight", (64, 3, 7, 7), "conv")] + _batchnorm("bn1", 64, tracked)
    in_channels = 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for index in range(count):
            block = f"layer{stage}.{index}"
            entries += [(f"{block}.conv1.weight", (width, in_channels, 1, 1), "conv")]
            entries += _batchnorm(f"{block}.bn1", width, tracked)
            entries += [(f"{block}.conv2.weight", (width, width, 3, 3), "conv")]
            entries += _batchnorm(f"{block}.bn2", width, tracked)
            entries += [(f"{block}.conv3.weight", (4 * width, width, 1, 1), "conv")]
            # The residual branch's last gain small, as in a trained ResNet (and torchvision's
            # zero_init_residual): with gains near 1 and running statistics unrelated to the
            # activations, the residual stream grew through the 16 blocks to features of mean
            # |x| 478 (a trained ResNet-50's are near 0.5), and AMR's training diverged on them.
            entries += _batchnorm(f"{block}.bn3", 4 * width, tracked, gain="residual_gain")
            if index == 0:
                entries += [(f"{block}.downsample.0.weight", (4 * width, in_channels, 1, 1), "conv")]
                entries += _batchnorm(f"{block}.downsample.1", 4 * width, tracked)
            in_channels = 4 * width
    return entries + _linear("fc", 1000, 2048)


def _torchvision_vgg19():
    """torchvision.models.vgg19 (configuration E, no BatchNorm): features.i and classifier.{0,3,6}."""
    entries, index, in_channels = [], 0, 3
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"):
        if item == "M":
            index += 1
            continue
        entries += [(f"features.{index}.weight", (item, in_channels, 3, 3), "conv"),
                    (f"features.{index}.bias", (item,), "bias")]
        in_channels, index = item, index + 2  # conv, ReLU
    return entries + _linear("classifier.0", 4096, 512 * 7 * 7) + _linear("classifier.3", 4096, 4096) \
        + _linear("classifier.6", 1000, 4096)


def layout(name, num_batches_tracked=False):
    """[(key, shape, kind)] of a checkpoint name in FILES (not clip_bpe), in the file's order."""
    if name == "vit_b16":
        return _timm_vit(768, 12, 3072, head=1000)
    if name == "dino_vits16":
        return _timm_vit(384, 12, 1536)
    if name == "clip_vit_b16":
        return _openai_clip_b16()
    if name == "resnet50":
        return _torchvision_resnet((3, 4, 6, 3), num_batches_tracked)
    if name == "resnet101":
        return _torchvision_resnet((3, 4, 23, 3), num_batches_tracked)
    if name == "vgg19":
        return _torchvision_vgg19()
    raise KeyError(f"no tensor layout for {name!r}; known: {', '.join(sorted(ARCHS))}")


# --------------------------------------------------------------------------- values


def fake_value(key, shape, kind, seed=0):
    """The value of one tensor: a function of (key, shape, kind, seed) only."""
    if kind == "int":
        return np.array(CLIP_SCALARS[key], dtype=np.int64)
    if kind == "count":
        return np.array(0, dtype=np.int64)
    if kind == "logit_scale":
        return np.array(math.log(100.0), dtype=np.float32)  # a trained CLIP's value (scale 100)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    if kind == "running_var":
        return rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    noise = rng.standard_normal(size=shape, dtype=np.float32)
    if kind == "gain":
        return 1.0 + 0.1 * noise
    if kind == "residual_gain":
        return 0.1 + 0.01 * noise
    if kind == "conv":  # He-like, so a full-size forward keeps its scale
        fan_in = int(np.prod(shape[1:]))
        return noise * np.float32(math.sqrt(2.0 / fan_in))
    if kind == "running_mean":
        return noise * np.float32(0.1)
    if kind in ("weight", "bias"):
        return noise * np.float32(0.02)
    raise ValueError(f"unknown value kind {kind!r}")


def fake_state(name, seed=0, num_batches_tracked=False):
    """{key: numpy array} of a checkpoint, in the file's order."""
    return collections.OrderedDict(
        (key, fake_value(key, shape, kind, seed)) for key, shape, kind in layout(name, num_batches_tracked))


def _openai_half(key):
    """Keys clip.model.convert_weights turns to float16: Conv/Linear weight and bias, attention
    in/out projections, `proj` and `text_projection`."""
    leaf = key.rsplit(".", 1)[-1]
    if key in ("text_projection", "visual.proj") or leaf in ("in_proj_weight", "in_proj_bias"):
        return True
    return any(part in key for part in (".out_proj.", ".c_fc.", ".c_proj.", "visual.conv1."))


# --------------------------------------------------------------------------- writers


def _torch_state(state):
    import torch

    return collections.OrderedDict((key, torch.from_numpy(_contiguous(value))) for key, value in state.items())


def _contiguous(value):
    # Not np.ascontiguousarray: it turns a 0-d array (logit_scale, CLIP's int scalars) into shape (1,).
    return value if value.flags.c_contiguous else value.copy()


def write_safetensors(state, path):
    from safetensors.numpy import save_file

    save_file({key: _contiguous(value) for key, value in state.items()}, path, metadata={"format": "pt"})


def write_torch(state, path, legacy=False):
    import torch

    torch.save(_torch_state(state), path, _use_new_zipfile_serialization=not legacy)


def write_torchscript(state, path):
    """A scripted module whose state_dict is `state` (nested submodules give the dotted names);
    float tensors become parameters, integer ones buffers, as in OpenAI's archives."""
    import torch

    class Root(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, value in _torch_state(state).items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        if value.is_floating_point():
            module.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(leaf, value)
    torch.jit.save(torch.jit.script(root), path)


# --------------------------------------------------------------------------- BPE vocabulary


def bytes_to_unicode():
    """GPT-2/CLIP's map of the 256 byte values to printable characters (clip/simple_tokenizer.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters)))


def fake_merges(seed=0, count=BPE_MERGES, words=PROMPT_WORDS):
    """`count` valid BPE merges "a b": a is a token without "</w>", b any token, both already in the
    vocabulary (bytes, bytes + "</w>", earlier merges) and "ab" new. The first merges spell
    `words` left to right (c l, cl e, cle a, clea n</w>); the rest are drawn at random."""
    symbols = list(bytes_to_unicode().values())
    known = set(symbols) | {symbol + "</w>" for symbol in symbols}
    inner = list(symbols)  # tokens that may stand left of a merge (no end-of-word mark)
    every = list(symbols) + [symbol + "</w>" for symbol in symbols]
    merges = []

    def add(left, right):
        joined = left + right
        if joined in known:
            return False
        known.add(joined)
        merges.append(f"{left} {right}")
        every.append(joined)
        if not joined.endswith("</w>"):
            inner.append(joined)
        return True

    for word in dict.fromkeys(words):
        prefix = word[0]
        for position, character in enumerate(word[1:], start=1):
            right = character + ("</w>" if position == len(word) - 1 else "")
            add(prefix, right)
            prefix += character
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    rng = random.Random(seed)
    while len(merges) < count:
        # Mostly short tokens (as real merges are), drawn among letters and recent merges.
        roll = rng.random()
        if roll < 0.3:
            left = rng.choice(letters)
        else:
            left = inner[rng.randrange(max(0, len(inner) - 4096) if roll < 0.65 else 0, len(inner))]
        roll = rng.random()
        right = rng.choice(letters) + ("</w>" if roll < 0.5 else "") if roll < 0.7 else rng.choice(every)
        add(left, right)
    return merges[:count]


def write_bpe(path, seed=0):
    text = "\n".join([BPE_HEADER] + fake_merges(seed)) + "\n"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write(text)


# --------------------------------------------------------------------------- main


def write(name, folder, seed=0, num_batches_tracked=False, clip_fp16=False):
    """Write one fake into `folder`; returns its path."""
    path = os.path.join(folder, FILES[name])
    if name == "clip_bpe":
        write_bpe(path, seed)
        return path
    state = fake_state(name, seed, num_batches_tracked)
    if name == "vit_b16":
        write_safetensors(state, path)
    elif name == "dino_vits16":
        write_torch(state, path)
    elif name == "clip_vit_b16":
        if clip_fp16:
            state = collections.OrderedDict(
                (key, value.astype(np.float16) if _openai_half(key) else value) for key, value in state.items())
        write_torchscript(state, path)
    else:  # torchvision's 2017 files
        write_torch(state, path, legacy=True)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--only", help=f"comma-separated names among {','.join(FILES)} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-batches-tracked", action="store_true",
                        help="add BatchNorm num_batches_tracked to the ResNets (newer torchvision files have it)")
    parser.add_argument("--clip-fp16", action="store_true",
                        help="CLIP weights in float16 where OpenAI's convert_weights puts them")
    parser.add_argument("--list", action="store_true", help="print the names and file names, write nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name, file_name in FILES.items():
            print(f"{name:14s} {file_name}")
        return 0
    if not args.out_dir:
        parser.error("OUT_DIR is required (or --list)")
    names = list(FILES) if not args.only else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in FILES]
    if unknown:
        parser.error(f"unknown names {unknown}; known: {', '.join(FILES)}")
    os.makedirs(args.out_dir, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        path = write(name, args.out_dir, args.seed, args.num_batches_tracked, args.clip_fp16)
        size = os.path.getsize(path) / 2**20
        print(f"{name:14s} {path}  {size:8.1f} MiB  {time.perf_counter() - start:6.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
