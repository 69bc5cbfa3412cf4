"""The data of a run, shared by training, evaluation and the tools.

    datasets.prepare(config)                         # tfds: built once, by process 0
    train = datasets.load_split(config, tables, "train")
    groups = datasets.class_groups(config, tables, train.hoi_counts)

`load_split` is `data_pipeline.sources.load_split` after `prepare`: records and a picklable
`images(record)` from the user's folder or from its tensorflow-datasets build, with the zero-shot
filter applied to the training split.
"""
import dataclasses
import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from data_pipeline import sources, splits
from data_pipeline.class_tables import ClassTables


def prepare(config) -> None:
    """Builds the tfds data set of `config.dataset` if it is not built yet (dataset.builder
    'tfds'); a no-op for 'folder'. Process 0 builds while the others wait, since several
    writers would race on the same folder."""
    d = config.dataset
    if d.builder != "tfds":
        return
    if jax.process_index() == 0 and not sources.tfds_builder(d).is_prepared():
        logging.info("Building the tfds data set of %s in %s (once; later runs read it)",
                     d.root, d.tfds_data_dir)
        sources.prepare(d)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("hoiclip_jax.datasets.prepare")


def load_split(config, tables: ClassTables, split: str) -> sources.HoiSplit:
    """`split` ('train' | 'test') of `config.dataset`, built first when needed."""
    prepare(config)
    loaded = sources.load_split(config.dataset, tables, split)
    if loaded.zero_shot.images_removed or loaded.zero_shot.pairs_removed:
        logging.info("%s split, zero-shot setting %r: %s", split, config.dataset.zero_shot,
                     loaded.zero_shot)
    return loaded


@dataclasses.dataclass(frozen=True)
class ClassGroups:
    """The two HOI class groups whose mean AP is reported besides the Full mean.

    Attributes:
        names: ('rare', 'non_rare'), or ('unseen', 'seen') in a zero-shot setting (§8.3).
        first: int32 HOI ids of the first group (rare / unseen).
        second: int32 HOI ids of the second group (non-rare / seen). A class in neither group
            (absent from a fractional training file, §4.2) counts in Full only.
    """
    names: tuple[str, str]
    first: np.ndarray
    second: np.ndarray

    def metric_keys(self) -> tuple[str, ...]:
        """The summary keys of `evaluation.summarise`, in table order."""
        return ("mAP", f"mAP_{self.names[0]}", f"mAP_{self.names[1]}", "mean_max_recall")


def class_groups(config, tables: ClassTables, train_hoi_counts: np.ndarray) -> ClassGroups:
    """Rare / non-rare from the training file in use (< eval.rare_threshold instances, §8.1),
    or unseen / seen in a zero-shot setting."""
    setting = config.dataset.zero_shot
    if setting != "none":
        return ClassGroups(("unseen", "seen"), splits.unseen_hois(tables, setting),
                           splits.seen_hois(tables, setting))
    rare, non_rare = splits.rare_split(train_hoi_counts, config.eval.rare_threshold)
    return ClassGroups(("rare", "non_rare"), rare, non_rare)
