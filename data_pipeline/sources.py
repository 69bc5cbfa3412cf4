"""The loader-facing data API: the records of a split and their images, from the folder or from
the tensorflow-datasets build, with the zero-shot filter applied to the training split.

    split = sources.load_split(config.dataset, tables, "train")
    split.records           # list[HoiRecord], what the loader shuffles and transforms
    split.images(record)    # PIL RGB image of a record
    split[i]                # (records[i], image): a random-access source for grain

`dataset.builder` picks the source:
- 'folder' reads `root/annotations/<file>` and the image files. Loading reads every image's
  header (not its pixels): a missing image or one whose header is unreadable is skipped, logged
  and counted (`skipped_images`); in the training split the boxes are clamped to the image and
  the degenerate ones removed with their HOIs, counted and logged, as the tfds builders do. Pixel
  data that turns out corrupt when decoded is handled by the loader (a training batch skips the
  image, counted; evaluation stops naming it).
- 'tfds' reads the array_record build of `root` (`hico_det.HicoDet` / `vcoco.Vcoco`) in
  `dataset.tfds_data_dir`; build it first with `prepare` (on one process) or
  `python -m data_pipeline.sources --config <config>`. No TensorFlow is imported.
"""
import dataclasses
import logging
import os
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import hico_det, hoi_tfds, loader, splits, vcoco
from data_pipeline.class_tables import ClassTables, load_class_tables
from data_pipeline.hico_reader import (HoiRecord, clamp_boxes, count_inverted,
                                       hoi_instance_counts, read_annotations)

BUILDERS = ("folder", "tfds")
# The files the tfds builders read (reference layout, §3.1): dataset.<field> must match.
_TFDS_LAYOUT = {
    "hico": dict(test_file="test_hico.json", train_images="train2015", test_images="test2015"),
    "vcoco": dict(train_file="trainval_vcoco.json", test_file="test_vcoco.json",
                  train_images="train2014", test_images="val2014"),
}


@dataclasses.dataclass(frozen=True)
class HoiSplit:
    """One split, ready for the loader.

    Attributes:
        name: 'train' or 'test'.
        records: the records to use, in annotation-file order (the training split after the
            zero-shot filter; images that could not be read are left out).
        images: `images(record) -> PIL RGB image` for any record of `records`.
        hoi_counts: [K] int64 HOI instances in the split's annotation file as written (before
            box clean-up and zero-shot filtering); `splits.rare_split` of the training split's
            counts gives the rare / non-rare classes.
        zero_shot: what the zero-shot filter removed (nothing for 'none' and the test split).
        skipped_images: file names of the images left out (missing or corrupt).
        boxes_removed: degenerate boxes (zero area, inverted or outside the image) removed from
            the records, with `hois_removed` HOIs on them (training splits; 0 for test splits,
            whose boxes are the evaluation's ground truth).
    """
    name: str
    records: list[HoiRecord]
    images: Callable[[HoiRecord], Image.Image]
    hoi_counts: np.ndarray
    zero_shot: splits.ZeroShotStats
    skipped_images: tuple[str, ...]
    boxes_removed: int = 0
    hois_removed: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[HoiRecord, Image.Image]:
        record = self.records[i]
        return record, self.images(record)


@dataclasses.dataclass(frozen=True)
class TfdsImages:
    """`record -> PIL RGB image` decoded from the tfds data source of a split.

    Attributes:
        source: the split's random-access data source (`builder.as_data_source(split)`);
            picklable, so grain worker processes can hold it.
        positions: record.image_id -> index of its example in `source`.
        where: the data set folder, named in errors.
    """
    source: object
    positions: dict[int, int]
    where: str

    def __call__(self, record: HoiRecord) -> Image.Image:
        example = self.source[self.positions[record.image_id]]
        name = hoi_tfds.example_file_name(example)
        if name != record.file_name:
            raise ValueError(f"{self.where}: example of image id {record.image_id} is {name!r}, "
                             f"the record is {record.file_name!r}; rebuild the data set")
        try:
            return hoi_tfds.decode_image(example["image"])
        except loader.DECODE_ERRORS as e:  # checked when built: the stored bytes changed
            raise loader.UnreadableImageError(
                f"{self.where}: image {name} (record {record.image_id}) cannot be decoded "
                f"({type(e).__name__}: {e})") from e

    def size(self, record: HoiRecord) -> tuple[int, int]:
        """(w, h) of the record's image from its header (the pixels are not decoded)."""
        return hoi_tfds.image_size(self.source[self.positions[record.image_id]]["image"])


def load_split(dataset_config, tables: ClassTables, split: str) -> HoiSplit:
    """The records and images of `split` ('train' | 'test') as `dataset_config` selects."""
    d = dataset_config
    check_dataset_config(d)
    if split not in ("train", "test"):
        raise ValueError(f"split {split!r}: expected 'train' or 'test'")
    if d.builder == "folder":
        records, images, counts, skipped, removed = _from_folder(d, tables, split)
    else:
        records, images, counts, skipped, removed = _from_tfds(d, split)
    if split == "test" and (inverted := count_inverted(records)):
        logging.warning("test split: %d inverted ground-truth boxes (x2 < x1 or y2 < y1), kept "
                        "as the reference keeps them; no prediction can match them", inverted)
    setting = d.zero_shot if split == "train" else "none"  # the evaluation sees every class
    records, stats = splits.filter_zero_shot(records, tables, setting)
    return HoiSplit(split, records, images, counts, stats, skipped, *removed)


def prepare(dataset_config) -> tfds.core.DatasetBuilder:
    """Builds the tfds data set of `dataset_config` from `root` unless it is already built.

    Run it on one process only (several would race on the same folder), then load everywhere.
    """
    check_dataset_config(dataset_config)
    if dataset_config.builder != "tfds":
        raise ValueError(f"dataset.builder is {dataset_config.builder!r}: nothing to prepare")
    builder = tfds_builder(dataset_config)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=dataset_config.root))
    return builder


def tfds_builder(dataset_config) -> hoi_tfds.HoiBuilder:
    """The (possibly unprepared) builder of `dataset_config` in `tfds_data_dir`."""
    d = dataset_config
    if d.name == "hico":
        config = hico_det.config_name(splits.fraction_of(d.train_file))
        return hico_det.HicoDet(config=config, data_dir=d.tfds_data_dir,
                                file_format="array_record")
    if d.name == "vcoco":
        return vcoco.Vcoco(data_dir=d.tfds_data_dir, file_format="array_record")
    raise ValueError(f"dataset.builder 'tfds' has no builder for dataset {d.name!r}; "
                     f"use 'folder'")


def check_dataset_config(d) -> None:
    """Raises ValueError naming the field when the data fields do not fit together."""
    if d.builder not in BUILDERS:
        raise ValueError(f"dataset.builder is {d.builder!r}, expected one of {BUILDERS}")
    splits.check_zero_shot_setting(d.zero_shot)
    if d.name == "hico":
        splits.fraction_of(d.train_file)  # a training file of the reference layout
    if d.builder == "tfds":
        if d.class_table:
            raise ValueError(f"dataset.class_table is {d.class_table!r}: the tfds builders use "
                             f"the packaged tables; set it to ''")
        for field, value in _TFDS_LAYOUT.get(d.name, {}).items():
            if d[field] != value:
                raise ValueError(f"dataset.{field} is {d[field]!r}; the tfds builder of "
                                 f"'{d.name}' reads {value!r} (reference layout); use builder "
                                 f"'folder' for other files")


def _from_folder(d, tables: ClassTables, split: str):
    file_name = d.train_file if split == "train" else d.test_file
    image_dir = os.path.join(d.root, "images", d.train_images if split == "train"
                             else d.test_images)
    records = read_annotations(os.path.join(d.root, "annotations", file_name), tables)
    counts = hoi_instance_counts(records, tables.num_hois)
    images = loader.FolderImages(image_dir)
    kept, skipped, boxes_removed, hois_removed = [], [], 0, 0
    for record in records:
        try:
            width, height = images.size(record)  # the header only
        except loader.UNREADABLE as e:
            logging.warning("%s split: skipped image: %s", split, e)
            skipped.append(record.file_name)
            continue
        if split == "train":  # the test boxes are the evaluation's ground truth
            record, boxes, hois = clamp_boxes(record, height, width)
            boxes_removed, hois_removed = boxes_removed + boxes, hois_removed + hois
        kept.append(record)
    logging.log(logging.WARNING if skipped else logging.INFO,
                "%s split of %s: %d images, %d skipped (missing or unreadable); %d degenerate "
                "boxes and %d HOIs on them removed", split, file_name, len(kept), len(skipped),
                boxes_removed, hois_removed)
    return kept, images, counts, tuple(skipped), (boxes_removed, hois_removed)


def _from_tfds(d, split: str):
    builder = tfds_builder(d)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{builder.data_dir} is not built; run `python -m data_pipeline.sources --config "
            f"<config>` (or sources.prepare(config.dataset) on one process) first")
    index = hoi_tfds.read_split_index(builder, split)
    if index.source == "sampled":
        logging.warning("%s: the training images are a deterministic sample (%s), NOT the "
                        "authors' subset", builder.data_dir, index.annotation_file)
    source = builder.as_data_source(split=split)
    if len(source) != len(index.records):
        raise ValueError(f"{builder.data_dir}: split {split!r} holds {len(source)} examples but "
                         f"its index {len(index.records)}; rebuild the data set")
    positions = {r.image_id: i for i, r in enumerate(index.records)}
    images = TfdsImages(source, positions, builder.data_dir)
    return (index.records, images, index.hoi_counts, index.skipped_images,
            (index.boxes_removed, index.hois_removed))


def main(argv) -> None:
    """Prepares the tfds data set of `--config` and prints what it holds."""
    del argv
    from absl import flags  # only for the command line
    config = flags.FLAGS.config
    builder = prepare(config.dataset)
    tables = load_class_tables(config.dataset)
    for split in ("train", "test"):
        s = load_split(config.dataset, tables, split)
        index = hoi_tfds.read_split_index(builder, split)
        print(f"{split}: {len(s)} images ({index.annotation_file}, {index.source}); "
              f"{len(s.skipped_images)} skipped; zero-shot {s.zero_shot}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
    flags.mark_flag_as_required("config")
    app.run(main)
