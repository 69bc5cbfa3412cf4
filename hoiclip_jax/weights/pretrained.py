"""Pretrained weights in: a DETR-R50 or HOICLIP `.pth` (read without torch), or a `.msgpack`.

    params = classifiers.init_params(model, rng, config, tables)
    params, report = pretrained.load_pretrained(path, params, config, tables)
    print(report.summary())

`path` is a DETR `.pth` (2-branch conversion applied, §4.3), a released HOICLIP `.pth`, or the
`.msgpack` that `python -m hoiclip_jax.tools.import_weights` writes (only the imported params).
"""
import os

import flax.serialization
import flax.traverse_util as traverse_util

from hoiclip_jax.weights import detr_import, hoiclip_import, mapping, torch_pickle


def checkpoint_kind(state: dict) -> str:
    """'detr' or 'hoiclip' from a state dict's key names."""
    if any(k.startswith("transformer.decoder.") for k in state):
        return "detr"
    if any(k.startswith(("transformer.clip_interaction_decoder.", "clip_model.")) for k in state):
        return "hoiclip"
    raise ValueError("neither a DETR (transformer.decoder.*) nor a HOICLIP "
                     "(transformer.clip_interaction_decoder.*, clip_model.*) state dict; first "
                     f"keys: {list(state)[:5]}")


def import_state_dict(state: dict, target, model_config, tables):
    """(flat params {path: array}, ImportReport) of a DETR or HOICLIP state dict."""
    if checkpoint_kind(state) == "detr":
        return detr_import.import_detr(state, target, tables.coco_ids, model_config.num_queries,
                                       tables.num_objects - len(tables.coco_ids))
    return hoiclip_import.import_hoiclip(state, target)


def read_msgpack(path: str) -> dict:
    """{'/'-joined path: array} of a params msgpack written by tools/import_weights."""
    with open(path, "rb") as f:
        tree = flax.serialization.msgpack_restore(f.read())
    return traverse_util.flatten_dict(tree, sep="/")


def load_pretrained(path: str, params, config, tables):
    """`params` with the weights of `path` filled in, and the ImportReport.

    Args:
      path: a `.pth` (DETR or HOICLIP, told apart by key names) or a `.msgpack`.
      params: our params tree (not modified).
      config: the full config (config.model.num_queries is read).
      tables: class tables (COCO ids for the DETR object rows).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path}: no such file")
    if path.endswith(".msgpack"):
        flat = read_msgpack(path)
        shapes = mapping.flat_shapes(params)
        report = mapping.ImportReport({k: k for k in flat}, sorted(set(shapes) - set(flat)), {},
                                      [])
    else:
        state, _ = torch_pickle.load_state_dict(path)
        flat, report = import_state_dict(state, params, config.model, tables)
    return mapping.merge(params, flat), report
