"""Caches the CLIP text embeddings of the class prompts (reference §1.7) in an .npz.

    python -m hoiclip_jax.tools.text_embeddings --clip weights/clip-vit-base-patch32 \
        --dataset hico --out weights/hico_text_embeddings.npz

then set `config.model.text_embeddings` to the file: `init_params` builds the HOI and object
classifiers from it without running the text tower. HICO-Det: 600 HOI prompts ('a photo of a
person boarding an airplane', ...) and 81 object prompts ('a photo of a bicycle', ..., 'a photo
of nothing'); V-COCO: 263 and 82. The prompts come from the packaged class tables
(data_pipeline/tables/{hico,vcoco}_classes.json), or from --class-table.
"""
import argparse

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from data_pipeline.class_tables import load_class_tables
from hoiclip_jax.weights import prompts as prompt_files
from hoiclip_jax.weights.clip import load_pretrained
from hoiclip_jax.weights.tokenizer import ClipBpeTokenizer

BATCH_SIZE = 128  # prompts per text-tower call (bounds the activation memory)


def encode_prompts(model, params, tokenizer, prompts, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """L2-normalised CLIP text embeddings [n, E] (float32) of `prompts`.

    Args:
      model, params: a CLIP module and its params (`load_pretrained`).
      tokenizer: texts -> [n, context_length] int32 ids with the EOT as argmax.
    """
    encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))
    tokens = tokenizer(list(prompts))
    # Causal tower pooled at the EOT: positions after the last EOT cannot change the result.
    tokens = tokens[:, :int(np.argmax(tokens, axis=1).max()) + 1]
    out = []
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size]
        # Pad the last chunk to the full batch so that jit compiles one shape only.
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
        out.append(np.asarray(encode(params, jnp.asarray(padded)))[:len(chunk)])
    embeddings = np.concatenate(out).astype(np.float32)
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)


def write_text_embeddings(clip_folder: str, tables, out: str) -> tuple[np.ndarray, np.ndarray]:
    """Encodes the HOI and object prompts of `tables` with the CLIP of `clip_folder` into `out`.

    Returns:
      (hoi [K, E], object [O + 1, E]) as written.
    """
    model, params = load_pretrained(clip_folder)
    tokenizer = ClipBpeTokenizer(clip_folder, model.spec.context_length)
    hoi = encode_prompts(model, params, tokenizer, tables.hoi_prompts)
    obj = encode_prompts(model, params, tokenizer, tables.object_prompts)
    prompt_files.save_prompt_embeddings(out, hoi, obj, tables, clip_folder)
    return hoi, obj


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", required=True, help="Hugging Face CLIP folder")
    parser.add_argument("--dataset", required=True, choices=("hico", "vcoco"))
    parser.add_argument("--out", required=True, help="the .npz to write")
    parser.add_argument("--class-table", default="",
                        help="class-table JSON (default: the packaged table of --dataset)")
    args = parser.parse_args(argv)
    tables = load_class_tables(mlc.ConfigDict(dict(name=args.dataset,
                                                   class_table=args.class_table)))
    hoi, obj = write_text_embeddings(args.clip, tables, args.out)
    print(f"{args.out}: hoi {hoi.shape}, object {obj.shape} ({tables.name} prompts, CLIP "
          f"{args.clip})")


if __name__ == "__main__":
    main()
