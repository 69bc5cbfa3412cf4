"""HICO-Det evaluation of a model: sharded inference, top-k on device, NMS and mAP on the host.

Used by `python -m hoiclip_jax.evaluate` and by evaluation during training.
"""
import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipeline import hico_reader, loader
from hoiclip_jax import postprocess, sharding
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


def predict_dataset(predict: Callable, params, records, tables, config, image_dir: str,
                    mesh) -> list[dict]:
    """Runs `predict` over `records` in order; returns one numpy dict of top-k per record."""
    results = []
    batches = loader.eval_batches(records, tables, config.dataset, image_dir,
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


def evaluate_predictions(predictions: list[dict], records, rare_hois, num_hois: int,
                         eval_config) -> dict:
    """Python-protocol HICO mAP (reference §8.1) of top-k predictions, with triplet NMS."""
    stacked = {k: np.stack([p[k] for p in predictions]) for k in predictions[0]}
    images = hico_metrics.predictions_from_topk(
        stacked, use_nms=eval_config.use_nms, nms_threshold=eval_config.nms_threshold,
        nms_alpha=eval_config.nms_alpha, nms_beta=eval_config.nms_beta)
    for image, record in zip(images, records):
        image["gt_boxes"] = record.boxes
        image["gt_hois"] = record.hois  # (subject, object, verb, hoi): the class is the last column
    return hico_metrics.evaluate(images, rare_hois=rare_hois, num_hois=num_hois,
                                 overlap_iou=eval_config.overlap_iou)


def rare_hois_from_training(config, tables) -> list[int]:
    """HOI classes with fewer than `eval.rare_threshold` instances in the training file."""
    path = os.path.join(config.dataset.root, "annotations", config.dataset.train_file)
    counts = hico_reader.hoi_instance_counts(hico_reader.read_annotations(path, tables),
                                             tables.num_hois)
    return [int(c) for c in np.flatnonzero(counts < config.eval.rare_threshold)]


def evaluate_hico(model, params, config, tables, mesh) -> tuple[dict, list[dict], list]:
    """Evaluates `params` on the test split. Returns (metrics, predictions, records)."""
    path = os.path.join(config.dataset.root, "annotations", config.dataset.test_file)
    records = hico_reader.read_annotations(path, tables)
    image_dir = os.path.join(config.dataset.root, "images", config.dataset.test_images)
    predict = make_predict_fn(model, tables, config.eval.max_hois, mesh)
    predictions = predict_dataset(predict, params, records, tables, config, image_dir, mesh)
    rare = rare_hois_from_training(config, tables)
    metrics = evaluate_predictions(predictions, records, rare, tables.num_hois, config.eval)
    return metrics, predictions, records


def format_table(rows: dict[str, dict]) -> str:
    """A percent table of Full / Rare / Non-rare mAP and mean max recall, one row per entry."""
    head = f"{'':<12}{'Full':>8}{'Rare':>8}{'Non-rare':>10}{'MaxRec':>8}"
    lines = [head, "-" * len(head)]
    pct = lambda v, width: f"{'n/a' if v is None else f'{100 * v:.2f}':>{width}}"
    for name, m in rows.items():
        lines.append(f"{name:<12}{pct(m['mAP'], 8)}{pct(m['mAP_rare'], 8)}"
                     f"{pct(m['mAP_non_rare'], 10)}{pct(m['mean_max_recall'], 8)}")
    return "\n".join(lines)
