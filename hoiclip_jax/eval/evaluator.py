"""Evaluation of a model: sharded inference with top-k (and TFE) on device, then the metrics of
a protocol (`registry`) on the host.

`Evaluator` is what `python -m hoiclip_jax.evaluate` and evaluation during training both use.
"""
import dataclasses
from typing import Optional

import numpy as np

from data_pipeline import datasets, sources
from hoiclip_jax.eval import inference, registry


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
    """Evaluates parameters on the test split under one protocol (`registry.PROTOCOLS`), with
    the TFE variants of `config.eval.tfe_k`; built once (data, protocol files, compiled
    inference), called at every evaluation: `report, predictions = evaluator(params, label)`."""

    def __init__(self, model, config, tables, mesh, protocol: Optional[str] = None,
                 train_hoi_counts: Optional[np.ndarray] = None):
        self.config, self.tables, self.mesh = config, tables, mesh
        self.protocol = protocol or registry.default_protocol(config.dataset.name)
        self.spec = registry.get(self.protocol, config.dataset.name)
        self.test = load_test_set(config, tables, train_hoi_counts)
        self.scorer = self.spec.scorer(config, tables, self.test)
        # What is predicted: the test split, or more (the official protocol's extra images).
        self.records, self.images = self.scorer.split.records, self.scorer.split.images
        e = config.eval
        self.variants = (0,) + tuple(e.tfe_k)
        self.predict = inference.make_predict_fn(model, tables, e.max_hois, mesh,
                                                 tuple(e.tfe_k), e.tfe_weight,
                                                 self.scorer.correct_mat)

    @property
    def columns(self) -> tuple:
        return self.scorer.columns

    def __call__(self, params, label: str) -> tuple[Report, list[dict]]:
        predictions = inference.predict_dataset(self.predict, params, self.scorer.split,
                                                self.tables, self.config, self.mesh)
        rows = {}
        for k in self.variants:
            name = label if k == 0 else f"{label} TFE k={k}"
            rows.update(self.scorer.rows(inference.select_variant(predictions, k), name))
        return Report(self.protocol, self.columns, rows, self.spec.main_key), predictions
