"""Batches of examples (docs/design.md) built with grain: shuffled training, padded evaluation.

Layout across processes: global batch j holds rows [j * B, (j + 1) * B) of the (shuffled or
padded) record order, and process p yields rows [p * b, (p + 1) * b) of it (b = B / P), so that
`jax.make_array_from_process_local_data` reassembles exactly that global batch.

One grain element is one batch: `dataset.num_threads` prefetch threads (in each of
`dataset.num_workers` worker processes, if any) build whole batches, so batches stay in order
and a worker never splits one. With `dataset.buckets`, every process pads batch j to the same
canvas: the smallest bucket that holds the output sizes of all B images of the global batch,
which each process computes from the image sizes (file headers for the other processes' rows)
and the examples' augmentation plans, without decoding those images.

Unreadable images: an image that is missing or cannot be decoded when a training batch is made
(the folder source only checks headers when it loads a split) is skipped, logged and counted
(`unreadable_counts`), and its row becomes a copy of the example of the next readable row of the
same global batch (wrapping around), augmentation included. So the batch keeps its shape, its
canvas (the copied example's size is already part of it) and its determinism: every process,
and every resumed run, makes the same substitution, as it depends only on the files. Only a
batch whose images are all unreadable is an error. In evaluation every image is needed: an
unreadable one is an error naming the file.
"""
import collections
import dataclasses
import logging
import os
import threading
from typing import Callable, Iterator, Optional, Union

import grain
import numpy as np
from absl import flags
from PIL import Image

from data_pipeline import transforms
from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import HoiRecord

# A folder holding every `record.file_name`, or a picklable `record -> PIL RGB image` (such as
# `sources.HoiSplit.images`). A callable may also have `size(record) -> (w, h)`: with
# dataset.buckets on several processes it sizes the other processes' images without decoding
# them (without it they are decoded once more for their size).
Images = Union[str, Callable[[HoiRecord], Image.Image]]
# PIL's errors for a file it cannot decode (truncated data, unknown format, bad header, ...).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class UnreadableImageError(OSError):
    """An image that cannot be decoded; the message names the file and the record."""


# What a training batch skips (and substitutes); evaluation raises on them instead.
UNREADABLE = (FileNotFoundError, UnreadableImageError)
# file name -> times its image was unreadable while making training batches, in this process.
_UNREADABLE = collections.Counter()
_UNREADABLE_LOCK = threading.Lock()  # grain's prefetch threads make batches concurrently


def unreadable_counts() -> dict[str, int]:
    """{file name: times skipped} of the training images this process could not read (with
    `dataset.num_workers` > 0 the skips happen, and are counted, in the worker processes; the
    log has them all)."""
    with _UNREADABLE_LOCK:
        return dict(_UNREADABLE)


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
    return FolderImages(image_dir)(record)


@dataclasses.dataclass(frozen=True)
class FolderImages:
    """The images of a folder: `record -> PIL RGB image`, and `size(record) -> (w, h)`."""
    image_dir: str

    def __call__(self, record: HoiRecord) -> Image.Image:
        """The RGB image (grayscale, palette, CMYK, ... converted as the reference's
        `convert('RGB')`); UnreadableImageError when it cannot be decoded."""
        with self._open(record) as image:
            try:
                return image.convert("RGB")
            except DECODE_ERRORS as e:
                raise UnreadableImageError(
                    f"image of record {record.image_id} cannot be decoded: "
                    f"{os.path.join(self.image_dir, record.file_name)} ({type(e).__name__}: "
                    f"{e})") from e

    def size(self, record: HoiRecord) -> tuple[int, int]:
        """(w, h) from the file header; nothing is decoded."""
        with self._open(record) as image:
            return image.size

    def _open(self, record: HoiRecord) -> Image.Image:
        path = os.path.join(self.image_dir, record.file_name)
        try:
            return Image.open(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"image of record {record.image_id} not found: "
                                    f"{path}") from None
        except DECODE_ERRORS as e:
            raise UnreadableImageError(f"image of record {record.image_id} cannot be read: "
                                       f"{path} ({type(e).__name__}: {e})") from e


def _image_source(images: Images) -> Callable[[HoiRecord], Image.Image]:
    return FolderImages(images) if isinstance(images, str) else images


def train_batches(records: list[HoiRecord], tables: ClassTables, dataset_config, images: Images,
                  *, global_batch_size: int, seed: int, epoch: int, process_index: int = 0,
                  process_count: int = 1, start_step: int = 0) -> Iterator[dict]:
    """Yields batches `start_step` .. `steps_per_epoch - 1` of `epoch`, each of
    `global_batch_size // process_count` examples (this process's rows).

    Batch j is a pure function of (records, dataset config, seed, epoch, j): the record order is
    a permutation fixed by (seed, epoch), and the augmentation of an example depends only on
    (seed, epoch, record index), not on the process layout, threads or workers. The loader thus
    keeps no iterator state: (epoch, step) is a complete checkpoint of the data stream, and
    `start_step` resumes mid-epoch without reading the skipped images. `images`: see `Images`.
    """
    transforms.check_dataset_config(dataset_config)
    layout = _Layout.make(global_batch_size, process_index, process_count)
    train = training_records(records)
    steps = steps_per_epoch(len(train), global_batch_size)
    epoch_seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    shuffled = grain.MapDataset.source(train).shuffle(seed=epoch_seed)
    make = _TrainBatch(shuffled, tables, dataset_config, _image_source(images), seed, epoch,
                       layout)
    return _iterate(grain.MapDataset.range(_start(start_step, steps), steps).map(make),
                    dataset_config)


def eval_batches(records: list[HoiRecord], tables: ClassTables, dataset_config, images: Images,
                 *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
    """Yields ceil(len(records) / global_batch_size) batches in record order, on every process.

    Each batch has an extra `example_mask [b] bool`; rows past the last record are masked copies
    of the last record.
    """
    transforms.check_dataset_config(dataset_config)
    layout = _Layout.make(global_batch_size, process_index, process_count)
    steps = -(-len(records) // global_batch_size)
    make = _EvalBatch(records, tables, dataset_config, _image_source(images), layout)
    return _iterate(grain.MapDataset.range(steps).map(make), dataset_config)


def example_rng(seed: int, epoch: int, record: HoiRecord) -> np.random.Generator:
    """The generator of one training example's augmentation."""
    return np.random.default_rng([seed, epoch, record.image_id])


def _start(start_step: int, steps: int) -> int:
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside the epoch's {steps} steps")
    return start_step


def _iterate(ds: grain.MapDataset, dataset_config) -> Iterator[dict]:
    threads = dataset_config.num_threads
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(1, threads)))
    if dataset_config.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (set by absl.app)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=dataset_config.num_workers))
    return iter(it)


def _image_rows(dataset_config, canvas: Optional[tuple[int, int]], rows: int) -> np.ndarray:
    """[rows, H, W, 3] f32 zeros: the batch's images, which the transforms write in place. It
    saves a zero-filled canvas and a copy of ~15 MB per HICO image: CPU time per batch of 16
    fell from 0.54 s to 0.36 s (measured, benchmarks/input_pipeline.py data)."""
    h, w = dataset_config.canvas if canvas is None else canvas
    return np.zeros((rows, h, w, 3), np.float32)


def _stack(examples: list[dict], images: np.ndarray) -> dict:
    """The batch of `examples`, whose `image` entries are the rows of `images`."""
    return {k: images if k == "image" else np.stack([ex[k] for ex in examples])
            for k in examples[0]}


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Which rows of the global order make batch j, and which of them are this process's."""
    local: int
    global_batch: int
    process_index: int

    @classmethod
    def make(cls, global_batch_size: int, process_index: int, process_count: int) -> "_Layout":
        if global_batch_size % process_count or not 0 <= process_index < process_count:
            raise ValueError(f"global batch {global_batch_size} over {process_count} processes "
                             f"(index {process_index}): the batch must divide evenly")
        return cls(global_batch_size // process_count, global_batch_size, process_index)

    def rows(self, step: int) -> range:
        """Global rows of batch `step`."""
        return range(step * self.global_batch, (step + 1) * self.global_batch)

    def mine(self, step: int) -> range:
        """This process's rows of batch `step`."""
        first = step * self.global_batch + self.process_index * self.local
        return range(first, first + self.local)


def _canvas(dataset_config, images, records: list, decoded: dict, output_size,
            skip_unreadable: bool = False) -> Optional[tuple[int, int]]:
    """The batch's canvas: None (= dataset.canvas) without buckets, else the smallest bucket
    holding `output_size(record, (w, h))` of every record; `decoded` maps a row's position to its
    image where it is already decoded. `skip_unreadable`: a record whose size cannot be read is
    left out (training: its row holds a copy of another row, whose size is counted), the same
    on every process since it depends only on the file."""
    if not dataset_config.buckets:
        return None
    size_of = getattr(images, "size", None) or (lambda record: images(record).size)
    sizes = []
    for i, record in enumerate(records):
        try:
            size = decoded[i].size if i in decoded else size_of(record)
        except UNREADABLE:
            if not skip_unreadable:
                raise
            continue
        sizes.append(output_size(record, size))
    return transforms.batch_canvas(sizes, dataset_config)


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
    """Picklable `step -> this process's training batch` (grain workers pickle the pipeline)."""
    shuffled: grain.MapDataset
    tables: ClassTables
    dataset_config: object
    images: Callable
    seed: int
    epoch: int
    layout: _Layout

    def __call__(self, step: int) -> dict:
        rows, mine = self.layout.rows(step), self.layout.mine(step)
        records = [self.shuffled[r] for r in rows]
        decoded, failed = {}, {}
        for i in (r - rows.start for r in mine):
            try:
                decoded[i] = self.images(records[i])
            except UNREADABLE as e:
                failed[i] = e
        # source[i]: the row whose example row i holds (itself unless its image is unreadable).
        source = {i: i for i in decoded}
        for i, error in failed.items():
            source[i] = self._substitute(step, i, records, decoded, failed, error)
        canvas = _canvas(self.dataset_config, self.images, records, decoded, self._size,
                         skip_unreadable=True)
        out = _image_rows(self.dataset_config, canvas, len(source))
        return _stack([
            transforms.train_example(decoded[j], records[j], self.tables, self.dataset_config,
                                     example_rng(self.seed, self.epoch, records[j]), canvas,
                                     out[row])
            for row, j in enumerate(source[i] for i in sorted(source))], out)

    def _substitute(self, step: int, i: int, records: list, decoded: dict, failed: dict,
                    error: OSError) -> int:
        """The next row after `i` (wrapping around) of the global batch whose image decodes
        (decoded into `decoded` here if another process owns it); logs and counts the skip."""
        n = len(records)
        for j in ((i + k) % n for k in range(1, n)):
            if j not in decoded and j not in failed:
                try:
                    decoded[j] = self.images(records[j])
                except UNREADABLE as e:
                    failed[j] = e
                    continue
            if j in decoded:
                with _UNREADABLE_LOCK:
                    _UNREADABLE[records[i].file_name] += 1
                logging.warning("epoch %d batch %d: skipped unreadable image (%s); its row holds "
                                "a copy of %s (record %d)", self.epoch, step, error,
                                records[j].file_name, records[j].image_id)
                return j
        raise type(error)(f"epoch {self.epoch} batch {step}: none of the {n} images of the "
                          f"global batch can be read; first: {error}") from error

    def _size(self, record: HoiRecord, size: tuple[int, int]) -> tuple[int, int]:
        rng = example_rng(self.seed, self.epoch, record)
        return transforms.train_output_size(size, self.dataset_config, rng)


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
    """Picklable `step -> this process's test batch` with `example_mask` (False on padding)."""
    records: list
    tables: ClassTables
    dataset_config: object
    images: Callable
    layout: _Layout

    def __call__(self, step: int) -> dict:
        rows, mine = self.layout.rows(step), self.layout.mine(step)
        last = len(self.records) - 1
        records = [self.records[min(r, last)] for r in rows]
        decoded = {r - rows.start: self.images(records[r - rows.start]) for r in mine}
        canvas = _canvas(self.dataset_config, self.images, records, decoded,
                         lambda _, size: transforms.test_output_size(size, self.dataset_config))
        out = _image_rows(self.dataset_config, canvas, len(decoded))
        examples = []
        for row, i in enumerate(sorted(decoded)):
            example = transforms.test_example(decoded[i], records[i], self.tables,
                                              self.dataset_config, canvas, out[row])
            example["example_mask"] = np.bool_(rows.start + i <= last)
            examples.append(example)
        return _stack(examples, out)
