"""HICO-Det evaluation of a model: sharded inference, top-k on device, NMS and mAP on the host.

Used by `python -m hoiclip_jax.evaluate` and by evaluation during training.
"""
import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipeline import loader, sources
from hoiclip_jax import datasets, postprocess, sharding
from hoiclip_jax.metrics import hico as hico_metrics


def make_predict_fn(model, tables, max_hois: int, mesh) -> Callable:
    """`predict(params, batch) -> top-k triplets` jitted over the mesh (batch sharded in).

    Returns per image: `scores [B,k]`, `hoi_ids [B,k]`, `query_ids [B,k]`, `sub_xyxy [B,N,4]`,
    `obj_xyxy [B,N,4]` (pixels of the original image), from the last decoder layer.
    """
    hoi_to_obj = jnp.asarray(tables.hoi_to_obj, jnp.int32)

    # Replicated outputs: every process gets the whole global batch's top-k (small), so that a
    # multi-process run can read them without touching other processes' devices.
    @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
    def predict(params, batch):
        out = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                          batch["clip_image"], train=False)
        return postprocess.hico_topk(out["hoi_logits"][-1], out["obj_logits"][-1],
                                     out["sub_boxes"][-1], out["obj_boxes"][-1],
                                     batch["orig_size"], hoi_to_obj, max_hois)

    return predict


def predict_dataset(predict: Callable, params, split, tables, config, mesh) -> list[dict]:
    """Runs `predict` over the records of `split` (a `sources.HoiSplit`) in order; returns one
    numpy dict of top-k per record."""
    records = split.records
    results = []
    batches = loader.eval_batches(records, tables, config.dataset, split.images,
                                  global_batch_size=config.eval.batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count())
    total = -(-len(records) // config.eval.batch_size)
    for batch in tqdm.tqdm(batches, total=total, desc="inference", unit="batch",
                           disable=jax.process_index() != 0):
        # This process's rows of the global batch; all rows, in order, from every process.
        mask = multihost_utils.process_allgather(batch.pop("example_mask"), tiled=True)
        out = jax.device_get(predict(params, sharding.put_batch(batch, mesh)))
        for i in np.flatnonzero(mask):
            results.append({k: v[i] for k, v in out.items()})
    if len(results) != len(records):
        raise RuntimeError(f"inference returned {len(results)} images for {len(records)} records")
    return results


def evaluate_predictions(predictions: list[dict], records, groups: datasets.ClassGroups,
                         num_hois: int, eval_config) -> dict:
    """Python-protocol HICO mAP (reference §8.1) of top-k predictions, with triplet NMS.

    Returns `metrics.hico.evaluate`'s dict, whose rare / non-rare means are over `groups`, plus
    the summary keys of `groups.metric_keys()` (e.g. `mAP_unseen` in a zero-shot setting).
    """
    stacked = {k: np.stack([p[k] for p in predictions]) for k in predictions[0]}
    images = hico_metrics.predictions_from_topk(
        stacked, use_nms=eval_config.use_nms, nms_threshold=eval_config.nms_threshold,
        nms_alpha=eval_config.nms_alpha, nms_beta=eval_config.nms_beta)
    for image, record in zip(images, records):
        image["gt_boxes"] = record.boxes
        image["gt_hois"] = record.hois  # (subject, object, verb, hoi): the class is the last column
    metrics = hico_metrics.evaluate(images, rare_hois=groups.first, num_hois=num_hois,
                                    overlap_iou=eval_config.overlap_iou,
                                    non_rare_hois=groups.second)
    first, second = groups.names
    metrics[f"mAP_{first}"] = metrics["mAP_rare"]
    metrics[f"mAP_{second}"] = metrics["mAP_non_rare"]
    return metrics


def summarise(metrics: dict, groups: datasets.ClassGroups) -> dict:
    """The summary of `evaluate_predictions` as JSON-ready floats (None for a mean over no
    class, e.g. when no rare class was predicted)."""
    return {k: None if np.isnan(metrics[k]) else float(metrics[k])
            for k in groups.metric_keys()}


@dataclasses.dataclass(frozen=True)
class TestSet:
    """What evaluation reads: the test split and the class groups of its means."""
    split: sources.HoiSplit
    groups: datasets.ClassGroups


def load_test_set(config, tables, train_hoi_counts: Optional[np.ndarray] = None) -> TestSet:
    """The test split of `config.dataset`, and the class groups from the HOI instance counts of
    its training file (read from the training split when not given)."""
    if train_hoi_counts is None:
        train_hoi_counts = datasets.load_split(config, tables, "train").hoi_counts
    return TestSet(datasets.load_split(config, tables, "test"),
                   datasets.class_groups(config, tables, train_hoi_counts))


def evaluate_hico(model, params, config, tables, mesh) -> tuple[dict, list[dict], TestSet]:
    """Evaluates `params` on the test split. Returns (metrics, predictions, test set)."""
    test = load_test_set(config, tables)
    predict = make_predict_fn(model, tables, config.eval.max_hois, mesh)
    predictions = predict_dataset(predict, params, test.split, tables, config, mesh)
    metrics = evaluate_predictions(predictions, test.split.records, test.groups,
                                   tables.num_hois, config.eval)
    return metrics, predictions, test


def format_table(rows: dict[str, dict], groups: datasets.ClassGroups) -> str:
    """A percent table of Full / Rare / Non-rare (or Unseen / Seen) mAP and mean max recall,
    one row per entry of `rows` (summaries of `summarise`)."""
    titles = ("Full",) + tuple(n.replace("_", "-").capitalize() for n in groups.names) + (
        "MaxRec",)
    widths = [max(8, len(t) + 2) for t in titles]
    head = f"{'':<12}" + "".join(f"{t:>{w}}" for t, w in zip(titles, widths))
    lines = [head, "-" * len(head)]
    pct = lambda v, width: f"{'n/a' if v is None else f'{100 * v:.2f}':>{width}}"
    for name, m in rows.items():
        lines.append(f"{name:<12}" + "".join(pct(m[k], w)
                                             for k, w in zip(groups.metric_keys(), widths)))
    return "\n".join(lines)
