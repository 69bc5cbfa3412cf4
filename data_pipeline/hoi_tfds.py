"""The common part of the tensorflow-datasets builders of HICO-Det and V-COCO (`hico_det.py`,
`vcoco.py`): features, image checks, box clean-up, and the annotation index.

The builders read the user's folder in the reference layout (§3.1) as tfds's `manual_dir` and
write one array_record example per image of each annotation file, in file order:

| feature | type | meaning |
|---|---|---|
| `image` | bytes | the image file's encoded bytes, unchanged |
| `file_name` | text | as in the annotation file |
| `image_id` | int32 | index of the record in its annotation file (`HoiRecord.image_id`) |
| `height`, `width` | int32 | size of the decoded image |
| `boxes` | [n, 4] float32 | xyxy in pixels of the image |
| `box_labels` | [n] int32 | object index (person = 0) |
| `hois` | [h, 4] int32 | (subject box, object box or -1, verb, HOI), as `HoiRecord.hois` |

Why the image is stored as raw bytes (`Tensor(shape=(), dtype=object)`) rather than a tfds
`Image` feature: without TensorFlow, tfds 4.9.10 decodes `Image` inside the data source's
`__getitem__` with OpenCV when it is installed, else PIL, and returns a numpy array. Raw bytes
are decoded by the reader with the same `PIL.Image.open(...).convert('RGB')` as the folder path
(and the reference), so both sources give identical pixels whatever is installed, the
augmentation (which works on PIL images) gets a PIL image without a round trip, and reading an
example for its annotations costs no decode.

Bad input: a missing or corrupt image (anything PIL cannot fully decode) is skipped, logged with
its path and counted; a malformed annotation stops the build (`AnnotationError` naming file,
image and field, raised before anything is written). In the training split, boxes are clamped to
the image and degenerate ones removed with their HOIs (§3.3, `hico_reader.clamp_boxes`); the test
split keeps the file's boxes, which are the evaluation's ground truth.

The builder's `metadata.json` holds an index of every split (`SplitIndex`): the records without
their images, the HOI counts of the annotation file (rare / non-rare classes), the skipped images
and the source of the annotation file, so that the training set, its zero-shot filter and its
counts are known without reading the images.
"""
import concurrent.futures
import dataclasses
import io
import logging
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data_pipeline import class_tables
from data_pipeline.class_tables import ClassTables
from data_pipeline.hico_reader import (HoiRecord, clamp_boxes, hoi_instance_counts,
                                       read_annotations)

_READ_THREADS = max(1, min(16, os.cpu_count() or 1))  # PIL decoding releases the GIL
_CHUNK = 64  # images read ahead at once (bounds the memory held by encoded images)
# PIL's errors for a file it cannot decode (truncated data, unknown format, bad header, ...).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclasses.dataclass(frozen=True)
class SplitFiles:
    """Where a split comes from: its annotation file, image folder and provenance."""
    annotation_file: str
    image_dir: str
    source: str  # 'reference' (file of the layout), 'authors' (fractional) or 'sampled'
    clamp: bool  # clamp boxes and remove degenerate ones (training splits)


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """The metadata of one built split (see the module docstring)."""
    records: list[HoiRecord]
    hoi_counts: np.ndarray       # [K] HOI instances in the annotation file, as written
    skipped_images: tuple[str, ...]
    annotation_file: str
    source: str
    boxes_removed: int
    hois_removed: int


def decode_image(data: bytes) -> Image.Image:
    """An encoded image as a PIL RGB image (the decode of the folder path and the reference)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def image_size(data: bytes) -> tuple[int, int]:
    """(w, h) of an encoded image, from its header."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def example_file_name(example: dict) -> str:
    """The file name stored in an example read back from the data source."""
    return _text(example["file_name"])


def record_from_example(example: dict) -> HoiRecord:
    """The `HoiRecord` of an example read back from the data source."""
    return HoiRecord(
        file_name=example_file_name(example), image_id=int(example["image_id"]),
        boxes=np.asarray(example["boxes"], np.float32).reshape(-1, 4),
        box_labels=np.asarray(example["box_labels"], np.int32).reshape(-1),
        hois=np.asarray(example["hois"], np.int32).reshape(-1, 4))


def read_split_index(builder: tfds.core.DatasetBuilder, split: str) -> SplitIndex:
    """The index of `split` from the metadata of a prepared builder."""
    meta = builder.info.metadata
    if meta is None or "splits" not in meta or split not in meta["splits"]:
        raise ValueError(f"{builder.data_dir}: no index of split {split!r} in metadata.json; "
                         f"rebuild the data set")
    m = meta["splits"][split]
    return SplitIndex(
        records=[_record_from_json(r) for r in m["records"]],
        hoi_counts=np.array(m["hoi_counts"], np.int64),
        skipped_images=tuple(m["skipped_images"]), annotation_file=m["annotation_file"],
        source=m["source"], boxes_removed=m["boxes_removed"], hois_removed=m["hois_removed"])


class HoiBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the HICO-Det and V-COCO builders; subclasses set the class attributes and
    `_split_files`."""
    TABLES = ""  # name of the packaged class tables
    HOMEPAGE = ""

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo built here rather than with dataset_info_from_configs, which looks for
        # README/citation files in a tfds package folder that this module does not have.
        features = tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "file_name": tfds.features.Text(),
            "image_id": tfds.features.Tensor(shape=(), dtype=np.int32),
            "height": tfds.features.Tensor(shape=(), dtype=np.int32),
            "width": tfds.features.Tensor(shape=(), dtype=np.int32),
            "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
            "box_labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "hois": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
        })
        # disable_shuffling: examples are stored in annotation-file order (integer keys), so
        # the index in metadata.json lists them in data-source order.
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                     homepage=self.HOMEPAGE, metadata=tfds.core.MetadataDict(),
                                     disable_shuffling=True)

    def _split_files(self, root: str, tables: ClassTables) -> dict[str, SplitFiles]:
        """The files of each split under `root` (the manual_dir)."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        tables = class_tables.load_class_tables(_TablesName(self.TABLES))
        self.info.metadata["splits"] = {}
        generators = {}
        for split, files in self._split_files(root, tables).items():
            # Read (and validate) every file before writing anything: a malformed record stops
            # the build here with the file, image and field named.
            records = read_annotations(files.annotation_file, tables)
            generators[split] = self._generate_examples(split, files, records, tables.num_hois)
        return generators

    def _generate_examples(self, split: str, files: SplitFiles, records: list[HoiRecord],
                           num_hois: int):
        """Yields (index in the file, example) for every readable image; fills the index."""
        kept, skipped, boxes_removed, hois_removed = [], [], 0, 0
        for record, image in _read_images(files.image_dir, records):
            if isinstance(image, str):
                logging.warning("%s split: skipped image %s: %s", split,
                                os.path.join(files.image_dir, record.file_name), image)
                skipped.append(record.file_name)
                continue
            data, height, width = image
            if files.clamp:
                record, boxes, hois = clamp_boxes(record, height, width)
                boxes_removed, hois_removed = boxes_removed + boxes, hois_removed + hois
            kept.append(_record_to_json(record, height, width))
            yield record.image_id, _example(record, data, height, width)
        if not kept:  # tfds cannot write an empty split; say why it is empty
            raise ValueError(f"{split} split of {files.annotation_file}: none of its "
                             f"{len(records)} images could be read in {files.image_dir} "
                             f"({len(skipped)} missing or corrupt)")
        logging.info("%s split of %s: %d images written, %d skipped (missing or corrupt); %d "
                     "degenerate boxes and %d HOIs removed", split, files.annotation_file,
                     len(kept), len(skipped), boxes_removed, hois_removed)
        self.info.metadata["splits"][split] = {
            "annotation_file": os.path.basename(files.annotation_file), "source": files.source,
            "records": kept, "skipped_images": skipped,
            "hoi_counts": hoi_instance_counts(records, num_hois).tolist(),
            "boxes_removed": boxes_removed, "hois_removed": hois_removed}


# ----------------------------------------------------------------------------- helpers

@dataclasses.dataclass(frozen=True)
class _TablesName:
    """The two fields of a dataset config that `load_class_tables` reads."""
    name: str
    class_table: str = ""


def _read_images(image_dir: str, records: list[HoiRecord]):
    """Yields (record, (bytes, height, width) or the reason it is unusable), in order."""
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
        for start in range(0, len(records), _CHUNK):
            chunk = records[start:start + _CHUNK]
            paths = [os.path.join(image_dir, r.file_name) for r in chunk]
            yield from zip(chunk, pool.map(_read_image, paths))


def _read_image(path: str) -> tuple[bytes, int, int] | str:
    """(encoded bytes, height, width) of the image at `path`, or why it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: a truncated file fails now, not during training
            width, height = image.size
    except FileNotFoundError:
        return "missing"
    except _DECODE_ERRORS as e:
        return f"corrupt ({type(e).__name__}: {e})"
    return data, height, width


def _example(record: HoiRecord, data: bytes, height: int, width: int) -> dict:
    return {"image": data, "file_name": record.file_name, "image_id": record.image_id,
            "height": height, "width": width, "boxes": record.boxes,
            "box_labels": record.box_labels, "hois": record.hois}


def _record_to_json(record: HoiRecord, height: int, width: int) -> dict:
    # str() of a float32 is its shortest round-trip form, which float() keeps exactly.
    boxes = [[float(str(v)) for v in box] for box in record.boxes]
    return {"file_name": record.file_name, "image_id": record.image_id, "height": height,
            "width": width, "boxes": boxes, "box_labels": record.box_labels.tolist(),
            "hois": record.hois.tolist()}


def _record_from_json(r: dict) -> HoiRecord:
    return HoiRecord(file_name=r["file_name"], image_id=r["image_id"],
                     boxes=np.array(r["boxes"], np.float32).reshape(-1, 4),
                     box_labels=np.array(r["box_labels"], np.int32).reshape(-1),
                     hois=np.array(r["hois"], np.int32).reshape(-1, 4))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
