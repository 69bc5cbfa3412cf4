"""The prompt-embedding file of `python -m hoiclip_jax.tools.text_embeddings`: the CLIP text
embeddings of the class prompts, so that training builds the classifiers without running the
text tower (config.model.text_embeddings)."""
import os

import numpy as np


def save_prompt_embeddings(path: str, hoi: np.ndarray, obj: np.ndarray, tables,
                           clip_folder: str) -> None:
    """Writes the .npz that config.model.text_embeddings points to.

    Keys: `hoi` [K, E] and `object` [O + 1, E] (L2-normalised, float32), `hoi_prompts` and
    `object_prompts` (the texts, checked on load against the class tables), `dataset`, `clip`.
    """
    np.savez(path, hoi=np.asarray(hoi, np.float32), object=np.asarray(obj, np.float32),
             hoi_prompts=np.array(tables.hoi_prompts), dataset=np.array(tables.name),
             object_prompts=np.array(tables.object_prompts), clip=np.array(clip_folder))


def load_prompt_embeddings(path: str, tables, embed_dim: int):
    """(hoi [K, E], object [O + 1, E]) from a `save_prompt_embeddings` file.

    Raises:
      FileNotFoundError / ValueError naming the file: missing file or key, a shape other than
      [K, E] / [O + 1, E], or prompts that differ from the class tables'.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.model.text_embeddings={path!r}: no such file (write it "
                                "with python -m hoiclip_jax.tools.text_embeddings)")
    out = []
    with np.load(path, allow_pickle=False) as data:
        for key, prompts in (("hoi", tables.hoi_prompts), ("object", tables.object_prompts)):
            for name in (key, f"{key}_prompts"):
                if name not in data:
                    raise ValueError(f"{path}: no array '{name}' (keys: {sorted(data.keys())})")
            value, stored = data[key], [str(p) for p in data[f"{key}_prompts"]]
            if value.shape != (len(prompts), embed_dim):
                raise ValueError(f"{path}: '{key}' has shape {value.shape}, expected "
                                 f"{(len(prompts), embed_dim)} for the '{tables.name}' class "
                                 "tables and config.model.clip.embed_dim")
            diff = [i for i, (a, b) in enumerate(zip(stored, prompts)) if a != b]
            if len(stored) != len(prompts) or diff:
                raise ValueError(f"{path}: the {key} prompts differ from the '{tables.name}' "
                                 f"class tables (first at index {(diff or [len(stored)])[0]})")
            out.append(value.astype(np.float32))
    return tuple(out)
