"""Text tokenizers for the CLIP text tower.

`WordTokenizer` is the stand-in until the CLIP BPE tokenizer arrives (issue 3): a closed
vocabulary of the lower-cased words of the class prompts. It keeps CLIP's conventions that the
model relies on: a start token, an end-of-text token with the LARGEST id (the text tower pools at
`argmax(token_ids)`), zero padding, a fixed context length. Any tokenizer with the same
`__call__(list[str]) -> np.ndarray [n, context_length] int32` can replace it.
"""
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


def build_tokenizer(clip_config, prompts: Sequence[str]) -> WordTokenizer:
    """The tokenizer for config.model.clip.

    Raises:
      NotImplementedError: when pretrained CLIP weights are configured, since their BPE
        vocabulary is needed (issue 3) and word ids would give meaningless text embeddings.
    """
    if clip_config.weights:
        raise NotImplementedError(f"config.model.clip.weights={clip_config.weights!r} needs the "
                                  "CLIP BPE tokenizer, which is not implemented yet (issue 3)")
    return WordTokenizer(prompts, clip_config.vocab_size, clip_config.context_length)
