"""Text tokenizers for the CLIP text tower.

`ClipBpeTokenizer` is CLIP's byte-level BPE (transformers' `CLIPTokenizer`) built from the
`vocab.json` and `merges.txt` of a Hugging Face CLIP folder; it goes with pretrained weights.
`WordTokenizer` serves the random demo CLIP: a closed vocabulary of the lower-cased words of the
class prompts. Both keep CLIP's conventions that the model relies on: a start token, an
end-of-text token with the LARGEST id (the text tower pools at `argmax(token_ids)`), zero padding
(as OpenAI's `clip.tokenize`), a fixed context length; both are
`__call__(list[str]) -> np.ndarray [n, context_length] int32`.
"""
import json
import os
from typing import Sequence

import numpy as np

PAD_ID = 0


def _words(text: str) -> list[str]:
    return text.lower().split()


class WordTokenizer:
    """Word-level tokenizer over a fixed list of prompts.

    Ids: 0 = padding, 1..n = the sorted distinct words, vocab_size - 2 = start of text,
    vocab_size - 1 = end of text.
    """

    def __init__(self, prompts: Sequence[str], vocab_size: int, context_length: int):
        """Builds the vocabulary.

        Raises:
          ValueError: if the words do not fit in `vocab_size` (config.model.clip.vocab_size).
        """
        words = sorted({w for p in prompts for w in _words(p)})
        if len(words) + 3 > vocab_size:
            raise ValueError(f"the prompts have {len(words)} distinct words; with padding, start "
                             f"and end tokens they need vocab_size >= {len(words) + 3}, but "
                             f"config.model.clip.vocab_size={vocab_size}")
        self.vocab = {w: i + 1 for i, w in enumerate(words)}
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.sot_id = vocab_size - 2
        self.eot_id = vocab_size - 1

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Tokenizes `texts`.

        Returns:
          [n, context_length] int32: start token, word ids, end token, zero padding.

        Raises:
          ValueError: for a word outside the vocabulary or a text longer than the context.
        """
        out = np.full((len(texts), self.context_length), PAD_ID, np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot_id] + [self._word_id(w, text) for w in _words(text)] + [self.eot_id]
            if len(ids) > self.context_length:
                raise ValueError(f"prompt {i} {text!r} needs {len(ids)} tokens (with start and "
                                 f"end), more than config.model.clip.context_length="
                                 f"{self.context_length}")
            out[i, :len(ids)] = ids
        return out

    def _word_id(self, word: str, text: str) -> int:
        if word not in self.vocab:
            raise ValueError(f"word {word!r} of prompt {text!r} is not in the WordTokenizer "
                             "vocabulary (built from the class prompts)")
        return self.vocab[word]


class ClipBpeTokenizer:
    """CLIP's tokenizer from a Hugging Face CLIP folder (vocab.json, merges.txt).

    transformers' `CLIPTokenizer` (lower-casing, whitespace cleanup, byte-level BPE,
    <|startoftext|> ... <|endoftext|>) is built from the two files explicitly: transformers 5
    ignores the `vocab_file=` / `merges_file=` arguments of older versions without a word.
    """

    def __init__(self, folder: str, context_length: int):
        """Reads the vocabulary.

        Raises:
          FileNotFoundError: a file is missing.
          ValueError: the end-of-text token is not the largest id (the text tower pools there).
        """
        from transformers import CLIPTokenizer  # a heavy import, needed only here
        vocab_path, merges_path = (os.path.join(folder, n) for n in ("vocab.json", "merges.txt"))
        for path in (vocab_path, merges_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such file (the CLIP tokenizer needs the "
                                        "vocab.json and merges.txt of the CLIP folder)")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        self._tokenizer = CLIPTokenizer(vocab=vocab, merges=_read_merges(merges_path))
        self.context_length = context_length
        self.sot_id = self._tokenizer.bos_token_id
        self.eot_id = self._tokenizer.eos_token_id
        if self.eot_id != max(vocab.values()):
            raise ValueError(f"{vocab_path}: the end-of-text token has id {self.eot_id}, not the "
                             "largest id, but the text tower pools at argmax(token_ids)")

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Tokenizes `texts` -> [n, context_length] int32 (start, BPE ids, end, zero padding).

        Raises:
          ValueError: for a text longer than the context (no silent truncation).
        """
        out = np.full((len(texts), self.context_length), PAD_ID, np.int32)
        for i, ids in enumerate(self._tokenizer(list(texts))["input_ids"]):
            if len(ids) > self.context_length:
                raise ValueError(f"prompt {i} {texts[i]!r} needs {len(ids)} tokens (with start "
                                 f"and end), more than context_length={self.context_length}")
            out[i, :len(ids)] = ids
        return out


def _read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt -> [(left, right)]; the first line may be a '#version' header."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    first = 1 if lines and lines[0].startswith("#version") else 0
    merges = []
    for number, line in enumerate(lines[first:], start=first + 1):
        if line:
            merges.append(tuple(line.split(" ")))
            if len(merges[-1]) != 2:
                raise ValueError(f"{path}: line {number} is not two space-separated symbols")
    return merges


def build_tokenizer(clip_config, prompts: Sequence[str]):
    """The tokenizer for config.model.clip: CLIP's BPE of the `weights` folder if set, else a
    `WordTokenizer` over `prompts` (the random CLIP)."""
    if clip_config.weights:
        return ClipBpeTokenizer(clip_config.weights, clip_config.context_length)
    return WordTokenizer(prompts, clip_config.vocab_size, clip_config.context_length)
