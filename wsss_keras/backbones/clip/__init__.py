"""CLIP backbone: image and text towers, tokenizer, class-prompt embeddings, importers.

- `CLIP`, `CLIPImageEncoder`, `CLIPTextEncoder` (`clip_model.py`);
- `CLIPTokenizer` (`clip_tokenizer.py`), `embed_class_prompts` (`clip_prompts.py`);
- `ARCHS` and `load_pretrained(source, arch, **kwargs)` (`clip_weights.py`), which builds a
  `CLIP` and loads an OpenAI `.pt`, a Hugging Face `CLIPModel` folder/file or a keras-hub
  `CLIPBackbone` preset, strictly.

Keras is imported only when a model class is first used, so importing this package keeps the
backend choice open.
"""

from wsss_keras.backbones.clip.clip_weights import ARCHS, load_pretrained

_LAZY = {
    "CLIP": "clip_model", "CLIPImageEncoder": "clip_model", "CLIPTextEncoder": "clip_model",
    "CLIPTokenizer": "clip_tokenizer", "embed_class_prompts": "clip_prompts",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"wsss_keras.backbones.clip.{_LAZY[name]}"), name)
    raise AttributeError(name)


__all__ = ["ARCHS", "CLIP", "CLIPImageEncoder", "CLIPTextEncoder", "CLIPTokenizer", "embed_class_prompts",
           "load_pretrained"]
