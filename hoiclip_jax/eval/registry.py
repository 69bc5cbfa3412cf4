"""The evaluation protocols by name: which data sets each applies to, the metric a run selects
its best state by, and how its scorer and its per-image triplets are made.

A new protocol is a scorer class in `scorers.py` (or its own module) plus one `Protocol` entry in
`PROTOCOLS`; the evaluator, `Predictor`, `predict` and the CLIs read everything from here.
"""
import dataclasses
from typing import Callable, Optional

import numpy as np

from hoiclip_jax.eval import scorers


@dataclasses.dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
      name: the `--protocol` value.
      datasets: the `config.dataset.name`s it applies to.
      default_for: the data sets it is the default protocol of.
      main_key: the summary key a run selects its best state by.
      scorer: `(config, tables, test_set) -> scorer` with `split` (the records and images to
        predict), `columns`, `correct_mat` and `rows(predictions, name)` (`scorers.py`).
      correct_mat: `(config, tables) -> [V, O + 1] or None`: None ranks (query, HOI class)
        pairs (HICO-Det's top-k), a verb-object validity ranks (query, verb) pairs (V-COCO's).
      image_predictions: `(stacked top-k, config.eval) -> [per-image dict]` with `pred_boxes`
        [2N, 4] and `pred_hois` [P, 4] (and V-COCO's `pred_box_labels`).
    """
    name: str
    datasets: tuple[str, ...]
    default_for: tuple[str, ...]
    main_key: str
    scorer: Callable
    correct_mat: Callable[..., Optional[np.ndarray]]
    image_predictions: Callable[[dict, object], list[dict]]


def _no_correct_mat(config, tables) -> None:
    del config, tables


PROTOCOLS = {p.name: p for p in (
    Protocol("python", ("hico", "synthetic"), ("hico", "synthetic"), "mAP",
             scorers.PythonScorer, _no_correct_mat, scorers.hico_image_predictions),
    Protocol("official", ("hico",), (), "mAP", scorers.OfficialScorer, _no_correct_mat,
             scorers.hico_image_predictions),
    Protocol("vcoco", ("vcoco",), ("vcoco",), "mAP_all", scorers.VcocoScorer,
             scorers.vcoco_correct_mat, scorers.vcoco_image_predictions),
)}


def default_protocol(dataset_name: str) -> str:
    """The protocol a data set is evaluated with unless `--protocol` says otherwise."""
    for protocol in PROTOCOLS.values():
        if dataset_name in protocol.default_for:
            return protocol.name
    raise ValueError(f"dataset {dataset_name!r} has no default evaluation protocol")


def get(name: str, dataset_name: str) -> Protocol:
    """The protocol `name`; ValueError when there is none or it does not apply to the data set."""
    if name not in PROTOCOLS:
        raise ValueError(f"protocol {name!r}: expected one of {tuple(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    if dataset_name not in protocol.datasets:
        usable = [p.name for p in PROTOCOLS.values() if dataset_name in p.datasets]
        raise ValueError(f"protocol {name!r} does not apply to dataset {dataset_name!r}; use "
                         f"{' or '.join(repr(u) for u in usable)}")
    return protocol


def for_dataset(dataset_name: str) -> Protocol:
    """The default protocol of a data set (what `Predictor` forms its triplets with)."""
    return PROTOCOLS[default_protocol(dataset_name)]
