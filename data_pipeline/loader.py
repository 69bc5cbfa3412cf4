"""Batches of examples (docs/design.md) built with grain: shuffled training, padded evaluation.

Layout across processes: global batch j holds rows [j * B, (j + 1) * B) of the (shuffled or
padded) record order, and process p yields rows [p * b, (p + 1) * b) of it (b = B / P), so that
`jax.make_array_from_process_local_data` reassembles exactly that global batch. Decoding and
transforms run in grain's prefetch threads (and worker processes if `dataset.num_workers > 0`).
"""
import dataclasses
import os
from typing import Iterator

import grain
import numpy as np
from absl import flags
from PIL import Image

from data_pipeline import transforms
from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord

NUM_THREADS = 4  # PIL decoding and resizing release the GIL; 2 cores are kept busy with 4


def training_records(records: list[HoiRecord]) -> list[HoiRecord]:
    """The records used for training: those with at least one HOI (as the reference)."""
    return [r for r in records if len(r.hois)]


def steps_per_epoch(num_train_records_with_hois: int, global_batch_size: int) -> int:
    """Full global batches per epoch (the remainder is dropped)."""
    steps = num_train_records_with_hois // global_batch_size
    if steps == 0:
        raise ValueError(f"{num_train_records_with_hois} training images with interactions do "
                         f"not fill one global batch of {global_batch_size}")
    return steps


def load_image(image_dir: str, record: HoiRecord) -> Image.Image:
    """Decodes the record's image as RGB; a missing file raises an error naming it."""
    path = os.path.join(image_dir, record.file_name)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image of record {record.image_id} not found: {path}") from None


def train_batches(records: list[HoiRecord], tables: ClassTables, dataset_config, image_dir: str,
                  *, global_batch_size: int, seed: int, epoch: int, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict]:
    """Yields `steps_per_epoch` numpy batches of `global_batch_size // process_count` examples.

    The order is a permutation fixed by (seed, epoch); the augmentation of an example depends
    only on (seed, epoch, record index), not on the process layout.
    """
    local = _local_batch_size(global_batch_size, process_index, process_count)
    train = training_records(records)
    steps = steps_per_epoch(len(train), global_batch_size)
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    shuffled = grain.MapDataset.source(train).shuffle(seed=epoch_seed)
    make = _TrainExample(shuffled, tables, dataset_config, image_dir, seed, epoch,
                         _Rows(local, global_batch_size, process_index))
    return _iterate(grain.MapDataset.range(steps * local).map(make), local, dataset_config)


def eval_batches(records: list[HoiRecord], tables: ClassTables, dataset_config, image_dir: str,
                 *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
    """Yields ceil(len(records) / global_batch_size) batches in record order, on every process.

    Each batch has an extra `example_mask [b] bool`; rows past the last record are masked copies
    of the last record.
    """
    local = _local_batch_size(global_batch_size, process_index, process_count)
    steps = -(-len(records) // global_batch_size)
    make = _EvalExample(records, tables, dataset_config, image_dir,
                        _Rows(local, global_batch_size, process_index))
    return _iterate(grain.MapDataset.range(steps * local).map(make), local, dataset_config)


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
    if global_batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(f"global batch {global_batch_size} over {process_count} processes "
                         f"(index {process_index}): the batch must divide evenly")
    return global_batch_size // process_count


def _iterate(ds: grain.MapDataset, local: int, dataset_config) -> Iterator[dict]:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=NUM_THREADS,
                                              prefetch_buffer_size=2 * local))
    if dataset_config.num_workers > 0:
        # Before batching: each worker takes every n-th element, so batching in the workers
        # would regroup the examples.
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (set by absl.app)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=dataset_config.num_workers))
    # Drop remainder keeps every batch the same shape; the sizes above make it exact anyway.
    return iter(it.batch(local, drop_remainder=True))


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Maps this process's i-th example to its row of the global (shuffled or padded) order."""
    local: int
    global_batch: int
    process_index: int

    def __call__(self, i: int) -> int:
        step, row = divmod(i, self.local)
        return step * self.global_batch + self.process_index * self.local + row


@dataclasses.dataclass(frozen=True)
class _TrainExample:
    """Picklable `i -> training example` (grain worker processes pickle the pipeline)."""
    shuffled: grain.MapDataset
    tables: ClassTables
    dataset_config: object
    image_dir: str
    seed: int
    epoch: int
    rows: _Rows

    def __call__(self, i: int) -> dict:
        record = self.shuffled[self.rows(i)]
        rng = np.random.default_rng([self.seed, self.epoch, record.image_id])
        return transforms.train_example(load_image(self.image_dir, record), record, self.tables,
                                        self.dataset_config, rng)


@dataclasses.dataclass(frozen=True)
class _EvalExample:
    """Picklable `i -> test example` with `example_mask` (False on padding rows)."""
    records: list
    tables: ClassTables
    dataset_config: object
    image_dir: str
    rows: _Rows

    def __call__(self, i: int) -> dict:
        row = self.rows(i)
        record = self.records[min(row, len(self.records) - 1)]
        example = transforms.test_example(load_image(self.image_dir, record), record,
                                          self.tables, self.dataset_config)
        example["example_mask"] = np.bool_(row < len(self.records))
        return example
