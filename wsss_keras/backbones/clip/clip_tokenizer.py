"""CLIP's byte-level BPE tokenizer, built on keras-hub's `CLIPTokenizer` from local files.

OpenAI's reference (`clip/simple_tokenizer.py` + `clip.tokenize`) does: clean the text
(`ftfy.fix_text` when installed, `html.unescape` twice, strip, collapse whitespace,
lowercase), split with CLIP's regex (specials | 's 't 're 've 'm 'll 'd | letter runs |
single digits | other non-space runs), map bytes to unicode, apply BPE with the end-of-word
marker `</w>`, then `[<|startoftext|>] + ids + [<|endoftext|>]`, zero-padded to 77.
keras-hub's `CLIPTokenizer` does the splitting and BPE; this class adds the cleaning, the
start/end tokens, the padding and the length check.

Vocabulary sources (nothing is downloaded):

- `from_files(vocab.json, merges.txt)`: the Hugging Face / keras-hub files;
- `from_bpe_file(bpe_simple_vocab_16e6.txt.gz)`: OpenAI's merges file; the vocabulary is
  rebuilt from it as the reference does (256 byte symbols, the same with `</w>`, the first
  48,894 merges, then the two special tokens: 49,408 entries).
"""

import gzip
import html
import json
import os
import re

import numpy as np

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
_OPENAI_MERGE_COUNT = 49152 - 256 - 2  # 48,894 merges are used by the reference


def bytes_to_unicode():
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
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


def clean_text(text):
    """CLIP's cleaning: ftfy (if installed), html-unescape twice, strip, collapse whitespace, lowercase."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; plain prompts are unchanged by it
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def pack_token_ids(texts, encode, start_id, end_id, context_length, truncate=False):
    """`[SOT] + encode(text) + [EOT]` per text, zero-padded: int32 `(len(texts), context_length)`.

    A text longer than the context is an error, or with `truncate` is cut so that its last kept
    token becomes EOT (OpenAI's `tokenize(truncate=True)`).
    """
    if isinstance(texts, str):
        texts = [texts]
    result = np.zeros((len(texts), context_length), dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [start_id] + encode(text) + [end_id]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(f"Prompt {text!r} has {len(ids)} tokens, more than the context length "
                                 f"{context_length}; shorten it or pass truncate=True.")
            ids = ids[:context_length]
            ids[-1] = end_id
        result[row, : len(ids)] = ids
    return result


class CLIPTokenizer:
    """Tokenize prompts into CLIP token ids, `(batch, context_length)` int32.

    Args:
        vocabulary: dict token -> id, or a path to `vocab.json`.
        merges: list of "a b" merge rules, or a path to `merges.txt`.
        context_length: int, 77 for CLIP.

    Example:
    ```python
    tokenizer = CLIPTokenizer.from_bpe_file("bpe_simple_vocab_16e6.txt.gz")
    tokenizer(["a clean origami aeroplane."])[0, :8]
    # [49406, 320, 3772, 31832, 27735, 3980, 269, 49407]
    ```
    """

    def __init__(self, vocabulary, merges, context_length=77):
        if isinstance(vocabulary, str):
            with open(vocabulary, encoding="utf-8") as file:
                vocabulary = json.load(file)
        if isinstance(merges, str):
            with open(merges, encoding="utf-8") as file:
                merges = [line.rstrip("\n") for line in file]
        merges = [merge for merge in merges if merge and not merge.startswith("#version")]
        for token in (START_TOKEN, END_TOKEN):
            if token not in vocabulary:
                raise ValueError(f"CLIP vocabulary lacks the special token {token!r}; is this a CLIP vocab.json?")
        import keras_hub

        self.vocabulary = dict(vocabulary)
        self.context_length = int(context_length)
        self._tokenizer = keras_hub.models.CLIPTokenizer(vocabulary=self.vocabulary, merges=merges)
        self.start_id = self.vocabulary[START_TOKEN]
        self.end_id = self.vocabulary[END_TOKEN]

    @classmethod
    def from_files(cls, vocabulary_path, merges_path, context_length=77):
        """From Hugging Face / keras-hub `vocab.json` (or `vocabulary.json`) and `merges.txt`."""
        for path in (vocabulary_path, merges_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: CLIP tokenizer file not found.")
        return cls(vocabulary_path, merges_path, context_length)

    @classmethod
    def from_bpe_file(cls, path, context_length=77):
        """From OpenAI's `bpe_simple_vocab_16e6.txt.gz` (gzip or plain text)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: OpenAI CLIP BPE file not found (bpe_simple_vocab_16e6.txt.gz).")
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as file:
            lines = file.read().split("\n")
        merges = [line for line in lines[1: _OPENAI_MERGE_COUNT + 1] if line]  # line 0 is a version header
        symbols = list(bytes_to_unicode().values())
        tokens = symbols + [symbol + "</w>" for symbol in symbols] + ["".join(m.split()) for m in merges]
        tokens += [START_TOKEN, END_TOKEN]
        return cls({token: index for index, token in enumerate(tokens)}, merges, context_length)

    def encode(self, text):
        """The BPE ids of one text, without start/end tokens."""
        ids = self._tokenizer(clean_text(text))
        return [int(i) for i in np.asarray(ids).reshape(-1)]

    def __call__(self, texts, truncate=False):
        """Token ids `(len(texts), context_length)` int32, `[SOT] + ids + [EOT]` then zeros.

        Args:
            texts: a string or a list of strings.
            truncate: cut texts that are too long (the last kept token becomes EOT) instead
                of raising.
        """
        return pack_token_ids(texts, self.encode, self.start_id, self.end_id, self.context_length, truncate)
