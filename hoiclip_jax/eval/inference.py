"""The one inference path: model forward, top-k triplets and the training-free enhancement.

`make_forward` is what the evaluator (`make_predict_fn`, sharded over the mesh), `Predictor` and
`python -m hoiclip_jax.predict` (on one device, with the sown features) all run, so that they
give the same triplets for the same image and padding.
"""
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipeline import loader, transforms
from hoiclip_jax.eval import scoring, tfe
from hoiclip_jax.lib import sharding
from hoiclip_jax.models import hoiclip

RANKED_KEYS = ("scores", "hoi_ids", "verb_ids", "query_ids")  # per TFE variant; the rest shared
# Sown features (hoiclip.INTERMEDIATES) -> the path of their sow in the model.
FEATURE_PATHS = {"clip_tokens": ("clip_tokens",), "q_inter": ("interaction", "queries"),
                 "o_inter": ("o_inter",), "verb_logits": ("verb_logits",)}


def make_forward(model, tables, max_hois: int, tfe_k: Sequence[int] = (),
                 tfe_weight: float = 1.0, correct_mat: Optional[np.ndarray] = None,
                 with_features: bool = False) -> Callable:
    """`forward(params, batch) -> top-k` (not jitted), or `-> (top-k, outputs, features)` with
    `with_features`.

    HICO-Det and the synthetic set (`scoring.hico_topk`) give per image `scores [B,k]`,
    `hoi_ids [B,k]`, `query_ids [B,k]`, `sub_xyxy`, `obj_xyxy [B,N,4]` (pixels of the original
    image), from the last decoder layer. V-COCO (`correct_mat` [V, O+1] given:
    `scoring.vcoco_topk`) gives `verb_ids` instead of `hoi_ids`, and `obj_labels [B,N]`.
    For each k of `tfe_k` the ranked keys are repeated as `<key>@tfe<k>` with the training-free
    enhancement of weight `tfe_weight` (`hoiclip_jax.eval.tfe`); `select_variant` picks one.
    Features: `FEATURE_PATHS`' sown values, batch-first as the model sows them.
    """
    hoi_to_obj = jnp.asarray(tables.hoi_to_obj, jnp.int32)
    if correct_mat is None:
        top = functools.partial(scoring.hico_topk, hoi_to_obj=hoi_to_obj, k=max_hois)
    else:
        top = functools.partial(scoring.vcoco_topk, hoi_to_obj=hoi_to_obj,
                                hoi_to_verb=jnp.asarray(tables.hoi_to_verb, jnp.int32),
                                correct_mat=jnp.asarray(correct_mat, jnp.float32), k=max_hois)

    def forward(params, batch):
        inputs = (batch["image"], batch["pixel_mask"], batch["clip_image"])
        if with_features:
            out, state = model.apply({"params": params}, *inputs, train=False,
                                     mutable=[hoiclip.INTERMEDIATES])
        else:
            out = model.apply({"params": params}, *inputs, train=False)
        heads = (out["hoi_logits"][-1], out["obj_logits"][-1], out["sub_boxes"][-1],
                 out["obj_boxes"][-1], batch["orig_size"])
        result = top(*heads)
        for k in tfe_k:
            bonus = tfe.bonus(out["clip_cls"], params["hoi_visual_projection"]["kernel"], k,
                              tfe_weight)
            ranked = top(*heads, hoi_bonus=bonus)
            result.update({f"{key}@tfe{k}": v for key, v in ranked.items()
                           if key in RANKED_KEYS})
        if not with_features:
            return result
        return result, out, _sown_features(state[hoiclip.INTERMEDIATES])

    return forward


def _sown_features(sown: dict) -> dict:
    features = {}
    for name, path in FEATURE_PATHS.items():
        node = sown
        for part in path:
            node = node[part]
        features[name] = node[0].astype(jnp.float32)  # sow keeps a tuple of the values
    return features


def make_predict_fn(model, tables, max_hois: int, mesh, tfe_k: Sequence[int] = (),
                    tfe_weight: float = 1.0, correct_mat: Optional[np.ndarray] = None
                    ) -> Callable:
    """`predict(params, batch) -> top-k triplets` (`make_forward`) jitted over the mesh, the
    batch sharded in."""
    forward = make_forward(model, tables, max_hois, tfe_k, tfe_weight, correct_mat)
    # Replicated outputs: every process gets the whole global batch's top-k (small), so that a
    # multi-process run can read them without touching other processes' devices.
    return jax.jit(forward, out_shardings=sharding.replicated(mesh))


def select_variant(predictions: list[dict], k: int) -> list[dict]:
    """The predictions without TFE (k = 0) or with TFE top-k, under the plain key names."""
    if k == 0:
        return [{key: v for key, v in p.items() if "@" not in key} for p in predictions]
    suffix = f"@tfe{k}"
    out = []
    for p in predictions:
        if not any(key.endswith(suffix) for key in p):
            raise KeyError(f"no TFE k={k} in the predictions (eval.tfe_k)")
        out.append({key.removesuffix(suffix): v for key, v in p.items()
                    if key.endswith(suffix) or ("@" not in key and key not in RANKED_KEYS)})
    return out


def predict_dataset(predict: Callable, params, split, tables, config, mesh) -> list[dict]:
    """Runs `predict` over the records of `split` (a `sources.HoiSplit`); returns one numpy
    dict of top-k per record, in record order.

    With `dataset.buckets`, the records are predicted in groups of one canvas each, every image
    at the smallest bucket that holds it alone (`bucket_groups`): a prediction then depends on
    the image only, not on which images share its batch, and `Predictor` gives the same.
    """
    records = split.records
    results: list[Optional[dict]] = [None] * len(records)
    for indices in bucket_groups(records, split.images, config.dataset):
        group = [records[i] for i in indices]
        rows = _predict_records(predict, params, group, split.images, tables, config, mesh)
        if len(rows) != len(group):
            raise RuntimeError(f"inference returned {len(rows)} images for {len(group)} "
                               "records")
        for i, row in zip(indices, rows):
            results[i] = row
    return results


def bucket_groups(records, images, dataset_config) -> list[list[int]]:
    """Record indices grouped by the canvas each image needs alone (groups in the order of
    their first record; one group of all records without `dataset.buckets`)."""
    if not dataset_config.buckets:
        return [list(range(len(records)))]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, record in enumerate(records):
        size = images.size(record) if hasattr(images, "size") else images(record).size
        out = transforms.test_output_size(size, dataset_config)
        groups.setdefault(transforms.batch_canvas([out], dataset_config), []).append(i)
    return list(groups.values())


def _predict_records(predict, params, records, images, tables, config, mesh) -> list[dict]:
    batches = loader.eval_batches(records, tables, config.dataset, images,
                                  global_batch_size=config.eval.batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
    total = -(-len(records) // config.eval.batch_size)
    results = []
    for batch in tqdm.tqdm(batches, total=total, desc="inference", unit="batch",
                           disable=jax.process_index() != 0):
        # This process's rows of the global batch; all rows, in order, from every process.
        mask = multihost_utils.process_allgather(batch.pop("example_mask"), tiled=True)
        out = jax.device_get(predict(params, sharding.put_batch(batch, mesh)))
        for i in np.flatnonzero(mask):
            results.append({k: v[i] for k, v in out.items()})
    return results
