"""A word-level tokenizer with CLIP's id layout, for the tiny CLIP the CPU recipes train.

OpenAI's BPE needs its merges file (`bpe_simple_vocab_16e6.txt.gz`), which cannot be
downloaded at run time; a model trained from scratch on synthetic captions needs only the few
words those captions use. This tokenizer keeps what CLIP's text tower relies on: ids are
`[SOT] + words + [EOT]` zero-padded to the context length, and EOT is the largest id, so the
tower pools at `argmax(ids)` as with OpenAI's vocabulary.
"""

import re

from wsss_keras.backbones.clip.clip_tokenizer import clean_text, pack_token_ids

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]")


def split_words(text):
    """Lower-cased words, single digits and single punctuation marks of `text`."""
    return _WORD.findall(clean_text(text))


class WordTokenizer:
    """Whole-word ids: 0 pads, words are 1..V, SOT = V + 1, EOT = V + 2 (the largest).

    Args:
        words: the vocabulary, in id order (duplicates are an error).
        context_length: int, the padded length.

    Example:
    >>> tokenizer = WordTokenizer.from_texts(["a photo of a boat.", "a photo of a car and a boat."])
    >>> tokenizer.vocabulary_size, tokenizer(["a boat."])[0, :5].tolist()
    (10, [8, 2, 4, 1, 9])
    """

    def __init__(self, words, context_length=16):
        words = [str(word) for word in words]
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: the vocabulary has duplicate words.")
        self.words = words
        self.context_length = int(context_length)
        self.ids = {word: index + 1 for index, word in enumerate(words)}
        self.start_id = len(words) + 1
        self.end_id = len(words) + 2

    @classmethod
    def from_texts(cls, texts, context_length=16):
        """The vocabulary of every word in `texts`, sorted."""
        return cls(sorted({word for text in texts for word in split_words(text)}), context_length)

    @property
    def vocabulary_size(self):
        """Rows the text tower's embedding needs: pad + words + SOT + EOT."""
        return len(self.words) + 3

    def encode(self, text):
        """Word ids of one text, without start and end tokens."""
        unknown = [word for word in split_words(text) if word not in self.ids]
        if unknown:
            raise ValueError(f"{text!r}: word(s) {unknown} not in the tokenizer's vocabulary of {len(self.words)} words.")
        return [self.ids[word] for word in split_words(text)]

    def __call__(self, texts):
        """Token ids `(len(texts), context_length)` int32."""
        return pack_token_ids(texts, self.encode, self.start_id, self.end_id, self.context_length)

    def get_config(self):
        return {"words": list(self.words), "context_length": self.context_length}
