"""Evaluation of a model: sharded inference with top-k (and TFE) on device, then the metrics of
a protocol (`protocols`) on the host.

`Evaluator` is what `python -m hoiclip_jax.evaluate` and evaluation during training both use.
"""
import dataclasses
import functools
import logging
import os
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from data_pipeline import loader, sources
from data_pipeline import datasets
from hoiclip_jax.eval import postprocess, registry as protocols, tfe
from hoiclip_jax.lib import sharding


RANKED_KEYS = ("scores", "hoi_ids", "verb_ids", "query_ids")  # per TFE variant; the rest shared


def make_predict_fn(model, tables, max_hois: int, mesh, tfe_k: Sequence[int] = (),
                    tfe_weight: float = 1.0, correct_mat: Optional[np.ndarray] = None
                    ) -> Callable:
    """`predict(params, batch) -> top-k triplets` jitted over the mesh (batch sharded in).

    HICO-Det and the synthetic set (`postprocess.hico_topk`) give per image `scores [B,k]`,
    `hoi_ids [B,k]`, `query_ids [B,k]`, `sub_xyxy`, `obj_xyxy [B,N,4]` (pixels of the original
    image), from the last decoder layer. V-COCO (`correct_mat` [V, O+1] given:
    `postprocess.vcoco_topk`) gives `verb_ids` instead of `hoi_ids`, and `obj_labels [B,N]`.
    For each k of `tfe_k` the ranked keys are repeated as `<key>@tfe<k>` with the training-free
    enhancement of weight `tfe_weight` (`hoiclip_jax.tfe`); `select_variant` picks one.
    """
    hoi_to_obj = jnp.asarray(tables.hoi_to_obj, jnp.int32)
    if correct_mat is None:
        topk = functools.partial(postprocess.hico_topk, hoi_to_obj=hoi_to_obj, k=max_hois)
    else:
        topk = functools.partial(postprocess.vcoco_topk, hoi_to_obj=hoi_to_obj,
                                 hoi_to_verb=jnp.asarray(tables.hoi_to_verb, jnp.int32),
                                 correct_mat=jnp.asarray(correct_mat, jnp.float32), k=max_hois)

    # Replicated outputs: every process gets the whole global batch's top-k (small), so that a
    # multi-process run can read them without touching other processes' devices.
    @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
    def predict(params, batch):
        out = model.apply({"params": params}, batch["image"], batch["pixel_mask"],
                          batch["clip_image"], train=False)
        heads = (out["hoi_logits"][-1], out["obj_logits"][-1], out["sub_boxes"][-1],
                 out["obj_boxes"][-1], batch["orig_size"])
        result = topk(*heads)
        for k in tfe_k:
            bonus = tfe.bonus(out["clip_cls"], params["hoi_visual_projection"]["kernel"], k,
                              tfe_weight)
            ranked = topk(*heads, hoi_bonus=bonus)
            result.update({f"{key}@tfe{k}": v for key, v in ranked.items()
                           if key in RANKED_KEYS})
        return result

    return predict


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


@dataclasses.dataclass(frozen=True)
class TestSet:
    """What evaluation reads: the records and images to predict, and the class groups."""
    split: sources.HoiSplit
    groups: datasets.ClassGroups


def load_test_set(config, tables, train_hoi_counts: Optional[np.ndarray] = None) -> TestSet:
    """The test split of `config.dataset`, and the class groups from the HOI instance counts of
    its training file (read from the training split when not given)."""
    if train_hoi_counts is None:
        train_hoi_counts = datasets.load_split(config, tables, "train").hoi_counts
    return TestSet(datasets.load_split(config, tables, "test"),
                   datasets.class_groups(config, tables, train_hoi_counts))


@dataclasses.dataclass(frozen=True)
class FallbackImages:
    """`record -> image` from `primary` for its records, else from the image folder (the
    official test images that the test annotation file leaves out)."""
    primary: object
    folder: loader.FolderImages
    primary_ids: frozenset

    def __call__(self, record):
        if record.image_id in self.primary_ids:
            return self.primary(record)
        return self.folder(record)


@dataclasses.dataclass(frozen=True)
class Report:
    """One evaluation: rows of summaries (fractions; None for a mean over no class).

    rows: row name -> {column key: value}; the first row is the model without TFE (in the
    Default setting for 'official'), the one a run selects its best state by (`main_key`).
    """
    protocol: str
    columns: tuple
    rows: dict
    main_key: str

    @property
    def main(self) -> dict:
        return next(iter(self.rows.values()))

    def table(self) -> str:
        """A percent table, one line per row."""
        widths = [max(8, len(c.title) + 2) for c in self.columns]
        name_width = max(12, max(len(n) for n in self.rows) + 2)
        head = f"{'':<{name_width}}" + "".join(f"{c.title:>{w}}"
                                               for c, w in zip(self.columns, widths))
        pct = lambda v, w: f"{'n/a' if v is None else f'{100 * v:.2f}':>{w}}"
        lines = [head, "-" * len(head)]
        for name, row in self.rows.items():
            lines.append(f"{name:<{name_width}}" + "".join(
                pct(row.get(c.key), w) for c, w in zip(self.columns, widths)))
        return "\n".join(lines)


class Evaluator:
    """Evaluates parameters on the test split under one protocol (`protocols.PROTOCOLS`), with
    the TFE variants of `config.eval.tfe_k`; built once (data, compiled inference), called at
    every evaluation: `report, predictions = evaluator(params, label)`."""

    def __init__(self, model, config, tables, mesh, protocol: Optional[str] = None,
                 train_hoi_counts: Optional[np.ndarray] = None):
        self.config, self.tables, self.mesh = config, tables, mesh
        self.protocol = protocol or protocols.default_protocol(config.dataset.name)
        protocols.check_protocol(self.protocol, config.dataset.name)
        self.test = load_test_set(config, tables, train_hoi_counts)
        self.records, self.images = self.test.split.records, self.test.split.images
        correct_mat = None
        if self.protocol == "official":
            self.official = protocols.read_official_files(config, tables)
            self._cover_official_images()
        elif self.protocol == "vcoco":
            self.vcoco = protocols.read_vcoco_files(config, tables)
            correct_mat = self.vcoco.correct_mat
        e = config.eval
        self.variants = (0,) + tuple(e.tfe_k)
        self.predict = make_predict_fn(model, tables, e.max_hois, mesh, tuple(e.tfe_k),
                                       e.tfe_weight, correct_mat)

    def _cover_official_images(self) -> None:
        records = protocols.official_records(self.records, self.official.gt)
        if len(records) > len(self.records):
            logging.info("protocol 'official': %d test images without a pair in %s are "
                         "predicted as well", len(records) - len(self.records),
                         self.config.dataset.test_file)
            d = self.config.dataset
            folder = loader.FolderImages(os.path.join(d.root, "images", d.test_images))
            self.images = FallbackImages(self.images, folder,
                                         frozenset(r.image_id for r in self.records))
            self.records = records

    @property
    def columns(self) -> tuple:
        if self.protocol == "python":
            return protocols.hico_columns(self.test.groups)
        if self.protocol == "official":
            return protocols.official_columns(self.official.groups)
        return protocols.vcoco_columns(self.vcoco)

    def __call__(self, params, label: str) -> tuple[Report, list[dict]]:
        split = dataclasses.replace(self.test.split, records=self.records, images=self.images)
        predictions = predict_dataset(self.predict, params, split, self.tables, self.config,
                                      self.mesh)
        rows = {}
        for k in self.variants:
            name = label if k == 0 else f"{label} TFE k={k}"
            rows.update(self.score(select_variant(predictions, k), name))
        return (Report(self.protocol, self.columns, rows, protocols.main_key(self.protocol)),
                predictions)

    def score(self, predictions: list[dict], name: str) -> dict[str, dict]:
        """Table rows of one prediction variant."""
        e = self.config.eval
        if self.protocol == "python":
            metrics = protocols.python_protocol(predictions, self.records, self.test.groups,
                                                self.tables.num_hois, e)
            return {name: protocols.summarise(metrics, self.columns)}
        if self.protocol == "official":
            settings = protocols.official_protocol(predictions, self.records, self.official,
                                                   self.tables, e)
            return {f"{name} Default": settings["default"],
                    f"{name} Known-Object": settings["known_object"]}
        return {name: protocols.vcoco_protocol(predictions, self.records, self.vcoco,
                                               self.tables, e)}
