"""CLIP tokenizer against transformers' CLIPTokenizer and an independent OpenAI-style BPE, on tiny local files."""

import collections
import gzip
import html
import json

import numpy as np
import pytest
import regex

from wsss_keras.backbones.clip.clip_tokenizer import CLIPTokenizer, bytes_to_unicode, clean_text

CORPUS = [
    "a clean origami aeroplane.", "a clean origami tvmonitor screen.", "a clean origami ground.",
    "a clean origami person with clothes,people,human.", "a rendering of a weird bicycle.",
    "the dog and the sofa", "it's a cat", "diningtable pottedplant motorbike 1234",
]
TEXTS = CORPUS + ["A  Clean\tOrigami   SHEEP!!", "unseen wordz x9y", "naïve café — ok?", "we'll see, they're 42"]


def _learn_merges(corpus, count):
    """A tiny BPE training run over the corpus (CLIP symbols: byte-unicode chars, '</w>' on the last)."""
    byte_map = bytes_to_unicode()
    words = collections.Counter()
    for text in corpus:
        for word in regex.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+", text.lower()):
            symbols = [byte_map[b] for b in word.encode("utf-8")]
            words[tuple(symbols[:-1] + [symbols[-1] + "</w>"])] += 1
    merges = []
    for _ in range(count):
        pairs = collections.Counter()
        for word, frequency in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += frequency
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda pair: pairs[pair])
        merges.append(best)
        merged = collections.Counter()
        for word, frequency in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += frequency
        words = merged
    return [f"{a} {b}" for a, b in merges]


def _openai_vocab(merges):
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    return {token: index for index, token in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}


def _reference_bpe_ids(text, vocab, merges, context_length=77):
    """OpenAI's simple_tokenizer algorithm, written independently (greedy lowest-rank merges)."""
    ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
    byte_map = bytes_to_unicode()
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip().lower()
    ids = [vocab["<|startoftext|>"]]
    pattern = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
    for token in regex.findall(pattern, text, regex.IGNORECASE):
        word = [byte_map[b] for b in token.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = [(ranks.get(pair, 1 << 30), index) for index, pair in enumerate(zip(word, word[1:]))]
            rank, index = min(pairs)
            if rank == 1 << 30:
                break
            first, second = word[index], word[index + 1]
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids.extend(vocab[piece] for piece in word)
    ids.append(vocab["<|endoftext|>"])
    return ids


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    merges = _learn_merges(CORPUS, 60)
    vocab = _openai_vocab(merges)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    with gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as file:
        file.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder, vocab, merges


def test_ids_match_transformers_and_reference_bpe(tiny_files):
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    folder, vocab, merges = tiny_files
    ours = CLIPTokenizer.from_files(str(folder / "vocab.json"), str(folder / "merges.txt"))
    hf = HFCLIPTokenizer(vocab=dict(vocab), merges=[tuple(m.split()) for m in merges])
    batch = ours(TEXTS)
    assert batch.shape == (len(TEXTS), 77) and batch.dtype == np.int32
    merged_somewhere = False
    for row, text in enumerate(TEXTS):
        expected = hf(text)["input_ids"]
        reference = _reference_bpe_ids(text, vocab, merges)
        assert expected == reference, text  # the two references agree with each other
        got = batch[row, : len(expected)].tolist()
        assert got == expected, (text, got, expected)
        assert not batch[row, len(expected):].any()
        merged_somewhere |= any(i >= 512 for i in expected[1:-1])
    assert merged_somewhere  # the tiny merges really are exercised


def test_openai_bpe_file_builds_the_same_tokenizer(tiny_files):
    folder, vocab, merges = tiny_files
    from_gz = CLIPTokenizer.from_bpe_file(str(folder / "bpe_simple_vocab_16e6.txt.gz"))
    assert from_gz.vocabulary == vocab
    assert from_gz.start_id == len(vocab) - 2 and from_gz.end_id == len(vocab) - 1
    np.testing.assert_array_equal(
        from_gz(TEXTS), CLIPTokenizer.from_files(str(folder / "vocab.json"), str(folder / "merges.txt"))(TEXTS))


def test_cleaning_truncation_and_errors(tiny_files):
    folder, vocab, merges = tiny_files
    tokenizer = CLIPTokenizer.from_files(str(folder / "vocab.json"), str(folder / "merges.txt"))
    assert clean_text("  A &amp;amp; B\n\tC ") == "a & b c"
    np.testing.assert_array_equal(tokenizer("a &amp; b"), tokenizer("A & B"))
    long_text = " ".join(["origami"] * 100)
    with pytest.raises(ValueError, match="context length 77"):
        tokenizer(long_text)
    truncated = tokenizer(long_text, truncate=True)[0]
    assert truncated[0] == tokenizer.start_id and truncated[-1] == tokenizer.end_id and truncated.all()
    with pytest.raises(ValueError, match="special token"):
        CLIPTokenizer({"a": 0}, [])
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab"):
        CLIPTokenizer.from_bpe_file(str(folder / "absent.txt.gz"))


def test_openai_vocabulary_layout_size():
    """The real file's layout: 256 + 256 + 48,894 merges + 2 specials = 49,408 (checked on synthetic merges)."""
    symbols = list(bytes_to_unicode().values())
    assert len(symbols) == 256 and len(set(symbols)) == 256
    from wsss_keras.backbones.clip.clip_tokenizer import _OPENAI_MERGE_COUNT

    assert 256 + 256 + _OPENAI_MERGE_COUNT + 2 == 49408
