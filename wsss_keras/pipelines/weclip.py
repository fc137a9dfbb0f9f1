"""The frozen-CLIP methods' stages: the CLIP they run on, training, online pseudo-labels.

- `train_clip` (stage `train_clip`): with `[clip] source = "train"` (the CPU recipes), a tiny
  CLIP is trained from scratch on the `[train]` split with captions made from its image-level
  labels (`wsss_keras.methods.clip_pretrain`) and saved as `clip.keras` with its word list;
  with `source = "openai"` nothing is trained (the stage says so).
- `load_clip` gives the CLIP the method runs on and its class and background prompt
  embeddings: from `clip.keras`, or from a local OpenAI `ViT-B-16.pt` / Hugging Face folder /
  keras-hub preset (`[clip] weights` or `--weights`) with OpenAI's BPE file (`[clip] tokenizer`);
  `--weights random` builds that CLIP untrained (smoke runs), with `HashingTokenizer` when the
  BPE file is absent.
- `train_weclip` (stage `train`): WeCLIP on the frozen tower (`[model]`, `[weclip]`, `[train]`),
  saved as `model.keras`; a method built on the host (SSR, `wsss_keras.pipelines.ssr`) plugs
  into it through a `WeCLIPPlugin` (its model, the loader's item maps, its callbacks).
- `make_online_pseudo_labels` (stage `pseudo_labels`, mode "online"): the method's own online
  pseudo-labels (Grad-CAM, affinity, PAR) of every image, at its full size.
"""

import json
import os

import numpy as np

from wsss_keras.errors import WSSSError
from wsss_keras.recipes import recipe_error, section
from wsss_keras.step_counts import default_steps, default_warmup

CLIP_FILE = "clip.keras"
CLIP_WORDS_FILE = "clip_words.json"
# WeCLIP's training schedule (configs/voc_attn_reg.yaml, utils/optimizer.py): AdamW, lr 2e-4
# with every trained parameter in the 10x group, wd 0.01, 50 warm-up steps, poly power 1.
WECLIP_OPTIMIZER = {"optimizer": "adamw", "learning_rate": 2e-4, "weight_decay": 0.01, "warmup_steps": default_warmup("weclip", "train"),
                    "power": 1.0}
WECLIP_BACKGROUND_VOC = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway", "railroad",
    "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley", "bridge", "sign",
)


def clip_source(recipe):
    source = section(recipe, "clip").get("source", "openai")
    if source not in ("train", "openai"):
        raise recipe_error(recipe, f"[clip] source = {source!r}; choose \"openai\" (local pretrained weights) or \"train\" (a tiny CLIP trained here).")
    return source


def caption_extras(dataset, tokenizer, template):
    """`item_extras` for the loader: each image's caption token ids, its classes in random order."""
    from wsss_keras.methods.clip_pretrain import caption_for

    names = dataset.class_names[1:]

    def extras(index, rng):
        classes = [names[c] for c in np.flatnonzero(dataset.labels[index])]
        return {"captions": tokenizer([caption_for(classes, rng, template)])[0]}

    return extras


def train_clip(recipe, data_dir, out_dir, steps=None, echo=print):
    """Train the tiny CLIP of `[clip]` (source "train") into `out_dir/clip.keras`; returns its
    path, or None when the recipe runs on pretrained weights."""
    import keras

    from wsss_keras.backbones.clip.clip_model import CLIP
    from wsss_keras.backbones.clip.word_tokenizer import WordTokenizer
    from wsss_keras.data.layouts import open_split
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import CamTrainTransform
    from wsss_keras.methods.clip_pretrain import (
        CAPTION_TEMPLATE,
        PROMPT_TEMPLATE,
        CaptionCLIP,
        caption_for,
    )
    from wsss_keras.pipelines.fitting import fit_steps, make_optimizer

    if clip_source(recipe) != "train":
        echo("[train-clip] the recipe runs on pretrained CLIP weights; nothing to train")
        return None
    settings = section(recipe, "clip")
    steps = int(steps or settings.get("steps", default_steps("weclip", "clip")))
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, section(recipe, "train").get("split", "train"))
    names = dataset.class_names[1:]
    caption_template = settings.get("caption_template", CAPTION_TEMPLATE)
    prompts = [template.format(name) for template in prompt_templates(recipe) for name in names]
    texts = prompts + [caption_for(names, None, caption_template)]
    context = 4 + 3 * len(names) + max(len(name.split()) for name in names) * len(names)
    tokenizer = WordTokenizer.from_texts(texts, context_length=int(settings.get("context_length", context)))
    text = {"vocabulary_size": tokenizer.vocabulary_size, "context_length": tokenizer.context_length,
            **dict(settings.get("text", {}))}
    try:
        clip = CLIP(image=dict(settings.get("image", {})), text=text)
        model = CaptionCLIP(clip, tokenizer([PROMPT_TEMPLATE.format(name) for name in names]),
                            caption_weight=settings.get("caption_weight", 1.0), prompt_weight=settings.get("prompt_weight", 1.0),
                            token_weight=settings.get("token_weight", 0.0), residual_drop=settings.get("residual_drop", 0.0),
                            seed=seed)
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[clip] {error}") from None
    transform = CamTrainTransform(crop_size=int(settings.get("crop_size", 96)),
                                  scale_range=tuple(settings.get("scale_range", (0.75, 1.5))), long_side=None)
    loader = SegmentationLoader(
        dataset, int(settings.get("batch_size", 16)), transform, shuffle=True, seed=seed, drop_remainder=True,
        item_extras=caption_extras(dataset, tokenizer, caption_template), workers=int(settings.get("workers", 1)),
    )
    defaults = {"optimizer": "adamw", "learning_rate": 1e-3, "weight_decay": 0.01,
                "warmup_steps": default_warmup("weclip", "clip"), "power": 0.9}
    model.compile(optimizer=make_optimizer(recipe, "clip", steps, None, defaults=defaults))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CLIP_WORDS_FILE), "w", encoding="utf-8") as handle:
        json.dump(tokenizer.get_config(), handle, indent=1)
    return fit_steps(model, loader, steps, out_dir, CLIP_FILE, recipe, stage="train-clip", echo=echo,
                     summary={"batch_size": loader.batch_size, "images": len(dataset), "vocabulary": tokenizer.words})


def prompt_templates(recipe):
    """`[clip] templates`: WeCLIP's single "a clean origami {}." for OpenAI's CLIP; the tiny
    CLIP's "a photo of a {}." (the form its captions take)."""
    default = ["a photo of a {}."] if clip_source(recipe) == "train" else ["a clean origami {}."]
    return list(section(recipe, "clip").get("templates", default))


def class_prompt_names(recipe, class_names):
    """The name each class is prompted with: `[clip] class_prompts` is a table renaming some
    classes (CLIP-ES's "bird avian", "tvmonitor screen", ...; the others keep their names), or
    a list with one name per class in the dataset's order."""
    given = section(recipe, "clip").get("class_prompts", {})
    if isinstance(given, dict):
        return [str(given.get(name, name)) for name in class_names]
    if len(given) != len(class_names):
        raise recipe_error(recipe, f"[clip] class_prompts lists {len(given)} names for {len(class_names)} classes "
                           f"({', '.join(class_names)}); give one per class, or a table renaming some of them.")
    return [str(name) for name in given]


class HashingTokenizer:
    """A stand-in for OpenAI's BPE when `--weights random` runs without `[clip] tokenizer`'s
    file: each word (`word_tokenizer.split_words`) hashes (CRC-32) to an id in
    1..vocabulary_size - 3, between CLIP's start (vocabulary_size - 2) and end (vocabulary_size - 1,
    the largest, where the text tower pools) tokens, zero-padded to the context length. Ids are
    valid for the tower and deterministic; the words mean nothing to an untrained CLIP anyway.

    Example:
    >>> ids = HashingTokenizer()(["a boat."])[0]  # start, "a", "boat", ".", end, padding
    >>> ids.shape, int(ids[0]), int(ids[4]), int(ids[5]), bool(0 < ids[1:4].min() and ids[1:4].max() < 49406)
    ((77,), 49406, 49407, 0, True)
    """

    def __init__(self, vocabulary_size=49408, context_length=77):
        if int(vocabulary_size) < 4:
            raise ValueError(f"HashingTokenizer: vocabulary_size {vocabulary_size} leaves no room for words.")
        self.vocabulary_size = int(vocabulary_size)
        self.context_length = int(context_length)
        self.start_id = self.vocabulary_size - 2
        self.end_id = self.vocabulary_size - 1

    def encode(self, text):
        """Word ids of one text, without start and end tokens."""
        import zlib

        from wsss_keras.backbones.clip.word_tokenizer import split_words

        return [zlib.crc32(word.encode("utf-8")) % (self.vocabulary_size - 3) + 1 for word in split_words(text)]

    def __call__(self, texts, truncate=False):
        """Token ids `(len(texts), context_length)` int32."""
        from wsss_keras.backbones.clip.clip_tokenizer import pack_token_ids

        return pack_token_ids(texts, self.encode, self.start_id, self.end_id, self.context_length, truncate)


def load_clip(recipe, out_dir, class_names, weights=None, echo=print):
    """(image encoder, class-prompt embeddings (C, E), background embeddings (M, E) or None,
    the CLIP's own logit scale) for the recipe's CLIP.

    `weights` = `registry.RANDOM_WEIGHTS` (`--weights random`, over `[clip] weights`) builds the
    recipe's CLIP arch untrained; its prompts are tokenized with `[clip] tokenizer` when that file
    exists, else with `HashingTokenizer` (valid ids for CLIP's vocabulary and context)."""
    import keras
    from keras import ops

    from wsss_keras.backbones.clip import embed_class_prompts

    settings = section(recipe, "clip")
    templates = prompt_templates(recipe)
    prompts = class_prompt_names(recipe, class_names)
    background = list(settings.get("background", []))
    if clip_source(recipe) == "train":
        path = os.path.join(out_dir, CLIP_FILE)
        if not os.path.isfile(path):
            raise WSSSError(f"{path}: no tiny CLIP here; run the train_clip stage first (wsss run ... --stages train_clip).")
        import wsss_keras.methods.clip_pretrain  # noqa: F401  (registers CaptionCLIP for loading)
        from wsss_keras.backbones.clip.word_tokenizer import WordTokenizer

        clip = keras.saving.load_model(path, compile=False, safe_mode=True).clip
        with open(os.path.join(out_dir, CLIP_WORDS_FILE), encoding="utf-8") as handle:
            tokenizer = WordTokenizer(**json.load(handle))
        source = path
    else:
        from wsss_keras.backbones import registry
        from wsss_keras.backbones.clip import CLIPTokenizer, load_pretrained

        source = weights or settings.get("weights")
        vocabulary = settings.get("tokenizer")
        if not source:
            raise recipe_error(recipe, "this recipe runs on OpenAI's CLIP ViT-B/16: pass --weights ViT-B-16.pt (or a Hugging Face "
                               "CLIP folder / keras-hub preset) or set [clip] weights.")
        has_vocabulary = bool(vocabulary) and os.path.isfile(vocabulary)
        if registry.is_random(source):
            clip = registry.build_untrained(settings.get("arch", "clip_vit_b16"), family_name="clip")
            if has_vocabulary:
                tokenizer = CLIPTokenizer.from_bpe_file(vocabulary, context_length=clip.text_encoder.context_length)
            else:
                tokenizer = HashingTokenizer(clip.text_encoder.vocabulary_size, clip.text_encoder.context_length)
            source = (f"{registry.weights_origin(source)} weights, tokenizer "
                      f"{vocabulary if has_vocabulary else f'HashingTokenizer (no [clip] tokenizer file {vocabulary!r})'}")
        else:
            if not has_vocabulary:
                raise recipe_error(recipe, f"[clip] tokenizer = {vocabulary!r}: give the local bpe_simple_vocab_16e6.txt.gz of OpenAI's CLIP.")
            clip = load_pretrained(source, settings.get("arch", "clip_vit_b16"))
            tokenizer = CLIPTokenizer.from_bpe_file(vocabulary)
    text = embed_class_prompts(clip, tokenizer, prompts, templates)
    back = embed_class_prompts(clip, tokenizer, background, templates) if background else None
    scale = float(np.exp(min(float(ops.convert_to_numpy(clip.logit_scale)), np.log(100.0))))
    echo(f"[train] CLIP from {source}: {len(prompts)} class prompts, {len(background)} background prompts, "
         f"template {templates[0]!r}")
    return clip.image_encoder, text, back, scale


class WeCLIPPlugin:
    """What a method built on the WeCLIP host adds to its training stage; this base adds
    nothing, and trains WeCLIP itself.

    A method on the host (SSR) subclasses it in its own pipeline module and hands an instance
    to `train_weclip`, as DOEI plugs into ToCo through the encoder's attention hook: the host
    never imports its plug-ins, and `pipelines.train.TRAINERS` names the plug-in's trainer.
    What a plug-in may change:

    - `options_table`: the recipe table of the model's options (`[weclip]`);
    - `build`: the untrained model, a `WeCLIP` or a subclass (whose extra loss terms are its
      `extra_losses`, `wsss_keras.methods.weclip`);
    - `item_maps`: the per-image maps the loader adds to the targets the model reads;
    - `callbacks`: Keras callbacks training runs with.
    """

    options_table = "weclip"

    def build(self, recipe, out_dir, encoder, num_classes, common, echo=print):
        """The untrained model on `encoder` for `num_classes` foreground classes; `common`
        holds the keyword arguments every model on the host takes."""
        from wsss_keras.methods.weclip import WeCLIP

        return WeCLIP(encoder, num_classes, **common)

    def item_maps(self, recipe, out_dir, dataset, model):
        """The loader's `item_maps` (index -> {name: (H, W) map}), or None."""

    def callbacks(self, recipe, model, loader, echo=print):
        """Further Keras callbacks for `fit_steps`."""
        return []


def build_method(recipe, dataset, out_dir, weights=None, echo=print, plugin=None):
    """The untrained model of the recipe for `dataset`'s classes: WeCLIP, or what `plugin` (a
    `WeCLIPPlugin`) builds on the host."""
    from wsss_keras.pipelines.fitting import saved_recipe

    plugin = plugin or WeCLIPPlugin()
    method = recipe["recipe"]["method"]
    model_settings = section(recipe, "model")
    encoder, text, background, clip_scale = load_clip(recipe, out_dir, dataset.class_names[1:], weights, echo)
    options = section(recipe, plugin.options_table)
    if options.get("logit_scale") == "clip":
        options["logit_scale"] = clip_scale
    common = dict(
        text_features=text, background_features=background, options=options,
        decoder_width=model_settings.get("decoder_width", 256), decoder_layers=model_settings.get("decoder_layers", 3),
        decoder_heads=model_settings.get("decoder_heads", 8), class_names=dataset.class_names, recipe=saved_recipe(recipe),
    )
    try:
        return plugin.build(recipe, out_dir, encoder, dataset.num_classes - 1, common, echo)
    except (TypeError, ValueError) as error:
        raise recipe_error(recipe, f"[{method}] {error}") from None


def train_weclip(recipe, data_dir, out_dir, weights=None, steps=None, echo=print, plugin=None):
    """Train WeCLIP's decoder (or that of the method `plugin`, a `WeCLIPPlugin`, builds on the
    host) on the frozen CLIP; returns the path of `model.keras`.

    Defaults are WeCLIP's VOC run (spec §2.1, §3.2): 30,000 steps of batch 4, 320 crops after a
    random rescale by 0.5..2.0, flips, AdamW (lr 2e-4, decoder at 10x, wd 0.01), 50 warm-up steps
    then poly 1.0.
    """
    import keras

    from wsss_keras.data.layouts import open_split
    from wsss_keras.data.loader import SegmentationLoader
    from wsss_keras.data.transforms import CamTrainTransform
    from wsss_keras.pipelines.fitting import MODEL_FILE, fit_steps, make_optimizer

    settings = section(recipe, "train")
    steps = int(steps or settings.get("steps", default_steps("weclip", "train")))
    seed = int(settings.get("seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = open_split(data_dir, settings.get("split", "train"))
    plugin = plugin or WeCLIPPlugin()
    model = build_method(recipe, dataset, out_dir, weights, echo, plugin=plugin)
    item_maps = plugin.item_maps(recipe, out_dir, dataset, model)
    # Every training image has at most this many classes: the Grad-CAMs of the step need no more
    # copies of block L (COCO: at most 18 of 80).
    model.max_labels_per_image = dataset.max_labels_per_image
    # WeCLIP pads its crops black before normalising (datasets/voc.py: mean_rgb=[0, 0, 0]) and
    # trains on the padding, so its colour is part of what the decoder learns.
    transform = CamTrainTransform(crop_size=int(settings.get("crop_size", 320)),
                                  scale_range=tuple(settings.get("scale_range", (0.5, 2.0))), long_side=None,
                                  pad_fill="black")
    loader = SegmentationLoader(
        dataset, int(settings.get("batch_size", 4)), transform, shuffle=True, seed=seed, drop_remainder=True,
        item_maps=item_maps, workers=int(settings.get("workers", 1)),
    )
    callbacks = plugin.callbacks(recipe, model, loader, echo)
    model.compile(optimizer=make_optimizer(recipe, "train", steps, model, defaults=WECLIP_OPTIMIZER))
    return fit_steps(model, loader, steps, out_dir, MODEL_FILE, recipe, stage="train", echo=echo, callbacks=callbacks,
                     summary={"batch_size": loader.batch_size, "images": len(dataset)})


def make_online_pseudo_labels(model, dataset, out_dir, regions=None, progress=None, overwrite=False):
    """Write the model's online pseudo-labels (`online_pseudo_labels`) of every image of
    `dataset` to `out_dir/<id>.png`, each at its image's size; returns how many were written.

    Args:
        model: a trained WeCLIP or SSR.
        dataset: the split (its image-level labels choose the classes).
        regions: for SSR, a `SuperpixelCache` of the colour-region maps (`region_maps`).
    """
    from keras import ops

    from wsss_keras.data.imageio import write_label_map
    from wsss_keras.data.transforms import normalize
    from wsss_keras.pipelines.cams import run_per_image
    from wsss_keras.pipelines.inference import OnlinePseudoLabels

    model.max_labels_per_image = dataset.max_labels_per_image  # Grad-CAMs of labelled classes only
    runner = OnlinePseudoLabels(model)

    def work(index, paths):
        image = dataset.load_image(index)
        inputs = normalize(image, model.image_mean, model.image_std)[None]
        labels = dataset.labels[index][None].astype("float32")
        batch = (inputs, labels) if regions is None else (inputs, labels, regions.load(dataset.names[index])[None])
        labels_map = runner.predict_on_batch(batch)
        write_label_map(paths[0], ops.convert_to_numpy(labels_map)[0].astype(np.uint8))

    return run_per_image(dataset.names, lambda name: [os.path.join(out_dir, f"{name}.png")], work, overwrite, progress)
