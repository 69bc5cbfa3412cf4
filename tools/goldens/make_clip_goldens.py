"""Writes tests/fixtures/clip_tiny/: a tiny random CLIP in both Hugging Face formats + goldens.

Run it (once, or after changing it) with a Python that has torch, transformers 4.x (which still
has FlaxCLIPModel), flax and jax; the project venv has none of torch / FlaxCLIPModel:

    /tmp/torch311/bin/python tools/goldens/make_clip_goldens.py --out tests/fixtures/clip_tiny

The tests (tests/test_weights/clip.py) load the folder with our own code, from both weight files,
and compare with `golden.npz`. The Flax file comes from transformers' own PyTorch->Flax converter
(`FlaxCLIPModel.from_pretrained(dir, from_pt=True)`), so it checks our converter independently.

Written files: config.json and model.safetensors (`CLIPModel.save_pretrained`), flax_model.msgpack,
vocab.json and merges.txt (a byte-level BPE in the OpenAI CLIP layout: 256 byte symbols, the same
with '</w>', the learned merges, then <|startoftext|> and <|endoftext|>, so the end-of-text id is
the largest), golden.npz. Everything is float32.
"""
import argparse
import collections
import json
import os
import re
import shutil
import tempfile

import numpy as np
import torch
import transformers
from transformers.models.clip.tokenization_clip import bytes_to_unicode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TABLES = [os.path.join(REPO, "data_pipeline", "tables", f"{n}_classes.json")
          for n in ("hico", "vcoco")]
NUM_MERGES = 300
CONTEXT_LENGTH = 32
IMAGE_SIZE, PATCH_SIZE = 32, 8
# Prompts whose token ids are recorded (lower/upper case, punctuation, a word the merges split).
TOKEN_PROMPTS = [
    "a photo of a person riding a bicycle",
    "A Photo of a person  holding a hair drier.",
    "a photo of a person's zebra, kite and xylophone!",
    "a photo of nothing",
]
SOT, EOT = "<|startoftext|>", "<|endoftext|>"


def table_prompts() -> list[str]:
    """All HOI and object prompts of the packaged HICO-Det and V-COCO class tables."""
    prompts = []
    for path in TABLES:
        with open(path) as f:
            table = json.load(f)
        prompts += [h["prompt"] for h in table["hois"]] + list(table["object_prompts"])
    return prompts


def learn_merges(texts, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on the lower-cased words of `texts` (ASCII), words ending in '</w>'."""
    counts = collections.Counter(w for t in texts for w in re.findall(r"[a-z]+", t.lower()))
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in counts}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, n in counts.items():
            s = seqs[word]
            for pair in zip(s, s[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # ties: deterministic
        merges.append(best)
        seqs = {w: _merge(s, best) for w, s in seqs.items()}
    return merges


def _merge(seq, pair):
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


def write_bpe(out: str, merges) -> dict:
    """vocab.json + merges.txt in the OpenAI CLIP order; returns the vocabulary."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate BPE token"
    with open(os.path.join(out, "vocab.json"), "w") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab


def clip_config(vocab_size: int) -> transformers.CLIPConfig:
    """Widths all different (vision 32, text 24, joint 16) so that a transposed kernel fails."""
    text = dict(vocab_size=vocab_size, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=3, max_position_embeddings=CONTEXT_LENGTH,
                hidden_act="quick_gelu", bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_act="quick_gelu")
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def random_model(config) -> transformers.CLIPModel:
    """CLIPModel with HF init, then non-trivial LayerNorm affines and biases (HF sets 1 / 0)."""
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
    return model


def tokenize(vocab_dir: str, prompts) -> np.ndarray:
    """Token ids [n, CONTEXT_LENGTH], zero padded as OpenAI CLIP; slow and fast tokenizer agree."""
    vocab, merges = [os.path.join(vocab_dir, n) for n in ("vocab.json", "merges.txt")]
    slow = transformers.CLIPTokenizer(vocab, merges)
    fast = transformers.CLIPTokenizerFast(vocab, merges)
    out = np.zeros((len(prompts), CONTEXT_LENGTH), np.int32)
    for i, text in enumerate(prompts):
        ids = slow(text)["input_ids"]
        assert ids == fast(text)["input_ids"], (text, ids, fast(text)["input_ids"])
        assert len(ids) <= CONTEXT_LENGTH, (text, len(ids))
        out[i, :len(ids)] = ids
    return out


def image_outputs(model, pixels_nhwc: np.ndarray, interpolate: bool):
    """(image_embeds [B, E], ln_post tokens [B, T, W]) of NHWC pixels."""
    pixels = torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        out = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=interpolate)
        tokens = model.vision_model.post_layernorm(out.last_hidden_state)
        embeds = model.visual_projection(out.pooler_output)
    np.testing.assert_allclose(tokens[:, 0].numpy(), out.pooler_output.numpy(), atol=1e-6)
    return embeds.numpy(), tokens.numpy()


def flax_check_and_save(out: str, model, pixels, token_ids) -> None:
    """transformers' own converter -> flax_model.msgpack; its outputs must equal PyTorch's."""
    flax_model = transformers.FlaxCLIPModel.from_pretrained(out, from_pt=True)
    with torch.no_grad():
        ref_img = model.get_image_features(torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
        ref_txt = model.get_text_features(torch.from_numpy(token_ids.astype(np.int64)))
    img = np.asarray(flax_model.get_image_features(pixels.transpose(0, 3, 1, 2)))
    txt = np.asarray(flax_model.get_text_features(token_ids))
    np.testing.assert_allclose(img, ref_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(txt, ref_txt.numpy(), atol=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        flax_model.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "flax_model.msgpack"), out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "clip_tiny"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    prompts = table_prompts()
    vocab = write_bpe(args.out, learn_merges(prompts, NUM_MERGES))
    assert vocab[EOT] == max(vocab.values())
    # Every table prompt must fit the tiny context, so that the text-embedding tool runs on it.
    tokenize(args.out, prompts)

    model = random_model(clip_config(len(vocab)))
    model.save_pretrained(args.out, safe_serialization=True)
    for name in ("pytorch_model.bin", "generation_config.json"):
        assert not os.path.exists(os.path.join(args.out, name)), name

    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    pixels_up = rng.normal(size=(2, 48, 48, 3)).astype(np.float32)      # 4x4 -> 6x6 positions
    pixels_down = rng.normal(size=(1, 24, 24, 3)).astype(np.float32)    # 4x4 -> 3x3 positions
    prompt_ids = tokenize(args.out, TOKEN_PROMPTS)
    # Plus random ids with the EOT at a chosen place and ids (not EOT) after it.
    random_ids = rng.integers(1, len(vocab) - 1, size=(2, CONTEXT_LENGTH)).astype(np.int32)
    random_ids[0, 5], random_ids[1, CONTEXT_LENGTH - 1] = len(vocab) - 1, len(vocab) - 1
    text_ids = np.concatenate([prompt_ids, random_ids])
    flax_check_and_save(args.out, model, pixels, text_ids)

    embeds, tokens = image_outputs(model, pixels, False)
    embeds_up, tokens_up = image_outputs(model, pixels_up, True)
    embeds_down, tokens_down = image_outputs(model, pixels_down, True)
    with torch.no_grad():
        text_embeds = model.get_text_features(torch.from_numpy(text_ids.astype(np.int64))).numpy()
    np.savez_compressed(
            os.path.join(args.out, "golden.npz"),
            pixel_values=pixels, image_embeds=embeds, tokens=tokens,
            pixel_values_48=pixels_up, image_embeds_48=embeds_up, tokens_48=tokens_up,
            pixel_values_24=pixels_down, image_embeds_24=embeds_down, tokens_24=tokens_down,
            token_prompts=np.array(TOKEN_PROMPTS), prompt_ids=prompt_ids,
            text_ids=text_ids, text_embeds=text_embeds)
    sizes = {n: os.path.getsize(os.path.join(args.out, n)) for n in sorted(os.listdir(args.out))}
    print(json.dumps(sizes, indent=1), "total", sum(sizes.values()))


if __name__ == "__main__":
    main()
