"""Reads HICO-Det / V-COCO annotation files in the PPDM schema (reference §3.2), validating them.

One JSON list, one entry per image:
    {"file_name": str, "img_id": int (optional, unused),
     "annotations": [{"bbox": [x1, y1, x2, y2] (pixels), "category_id": COCO id}],
     "hoi_annotation": [{"subject_id": index into annotations, "object_id": index or -1,
                         "category_id": verb id, "hoi_category_id": 1..K}]}
`object_id == -1` (no role object) is allowed only with a table that has a no-object class
(V-COCO), where `hoi_category_id` may also be absent: it is then derived from (verb, object).
Verb ids start at `tables.verb_id_base` (1 for HICO-Det, 0 for V-COCO). File names are taken as
they are (`HICO_train2015_….jpg`, `COCO_val2014_….jpg`): the image id is the record's index in its
file, never parsed from the name (the reference's `int(file_name.rstrip('.jpg'))` crashes on
V-COCO names, §3.3).

Boxes must be 4 finite numbers, but a degenerate box (zero area, inverted, or outside the image)
is not an error: as in the reference (§3.3), the training splits clamp boxes to the image and
drop the degenerate ones with their HOIs (`clamp_boxes`, counted by the builders), and the test
splits keep the file's boxes as the evaluation's ground truth (`count_inverted` is logged there).
"""
import dataclasses
import math

import numpy as np

from data_pipeline.class_tables import ClassTables, load_json


_NUMBERS = (int, float)


class AnnotationError(ValueError):
    """A malformed annotation; the message names the file, the image and the field."""


@dataclasses.dataclass(frozen=True)
class HoiRecord:
    """The annotations of one image.

    Attributes:
        file_name: image file name, relative to the split's image folder.
        image_id: index of the record in its annotation file.
        boxes: [n, 4] float32 xyxy in pixels of the original image.
        box_labels: [n] int32 object index (person = 0).
        hois: [h, 4] int32 rows (subject box index, object box index or -1, verb index,
            HOI index).
    """
    file_name: str
    image_id: int
    boxes: np.ndarray
    box_labels: np.ndarray
    hois: np.ndarray


def read_annotations(json_path: str, tables: ClassTables) -> list[HoiRecord]:
    """Reads and validates every record of `json_path`; raises AnnotationError on the first flaw."""
    return parse_annotations(load_json(json_path, AnnotationError), json_path, tables)


def parse_annotations(raw, json_path: str, tables: ClassTables) -> list[HoiRecord]:
    """Validates the decoded JSON `raw` of `json_path` (named in errors) and returns its records."""
    if not isinstance(raw, list):
        raise AnnotationError(f"{json_path}: the top level must be a list of images, got "
                              f"{type(raw).__name__}")
    parser = _RecordParser(json_path, tables)
    return [parser.parse(index, entry) for index, entry in enumerate(raw)]


def clamp_boxes(record: HoiRecord, height: int, width: int) -> tuple[HoiRecord, int, int]:
    """Clamps the boxes to the image and removes the degenerate ones, as the reference (§3.3).

    A box is degenerate when, after clamping to [0, width] x [0, height], x2 <= x1 or y2 <= y1.
    The HOIs that refer to a removed box are removed too; the other HOIs are re-indexed. A
    no-object role (object index -1) is kept.

    Returns:
        (record, number of boxes removed, number of HOI rows removed).
    """
    boxes = np.clip(record.boxes, 0, np.array([width, height, width, height], np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    # new_index[i] is the new index of box i, -2 when it is removed; the extra last entry maps
    # the no-object role -1 onto itself.
    new_index = np.full(len(keep) + 1, -2, np.int32)
    new_index[np.flatnonzero(keep)] = np.arange(int(keep.sum()), dtype=np.int32)
    new_index[-1] = -1
    hois = record.hois.copy()
    hois[:, 0], hois[:, 1] = new_index[hois[:, 0]], new_index[hois[:, 1]]
    hois = hois[(hois[:, 0] >= 0) & (hois[:, 1] >= -1)]
    clean = dataclasses.replace(record, boxes=boxes[keep].astype(np.float32),
                                box_labels=record.box_labels[keep], hois=hois)
    return clean, int((~keep).sum()), len(record.hois) - len(hois)


def count_inverted(records: list[HoiRecord]) -> int:
    """Number of inverted boxes (x2 < x1 or y2 < y1) in `records`: kept in a test split as the
    reference keeps them, no prediction can match one (its +1-pixel area is <= 0)."""
    return sum(int(((r.boxes[:, 2] < r.boxes[:, 0]) | (r.boxes[:, 3] < r.boxes[:, 1])).sum())
               for r in records)


def hoi_instance_counts(records: list[HoiRecord], num_hois: int) -> np.ndarray:
    """[K] int64 number of annotated HOI instances per class (rare: count < rare_threshold)."""
    counts = np.zeros(num_hois, np.int64)
    for record in records:
        if len(record.hois):
            np.add.at(counts, record.hois[:, 3], 1)
    return counts


class _RecordParser:
    """Parses records of one file; holds the look-up tables so that each record is cheap."""

    def __init__(self, path: str, tables: ClassTables):
        self.path = path
        self.tables = tables
        self.coco_to_obj = {c: i for i, c in enumerate(tables.coco_ids)}
        self.no_object = tables.no_object_index
        self.hoi_lookup = {pair: k for k, pair in enumerate(tables.hois)}

    def parse(self, index: int, entry) -> HoiRecord:
        where = f"{self.path}: image #{index}"
        if not isinstance(entry, dict):
            raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
        name = entry.get("file_name")
        if not isinstance(name, str) or not name:
            raise AnnotationError(f"{where}: field 'file_name' must be a non-empty string, got "
                                  f"{name!r}")
        where = f"{self.path}: image #{index} ({name})"
        if "img_id" in entry and not _is_int(entry["img_id"]):
            raise AnnotationError(f"{where}: field 'img_id' must be an integer, got "
                                  f"{entry['img_id']!r}")
        boxes, labels = self._boxes(where, _list_field(where, entry, "annotations"))
        hois = self._hois(where, _list_field(where, entry, "hoi_annotation"), labels)
        return HoiRecord(
            file_name=name, image_id=index,
            boxes=np.array(boxes, np.float32).reshape(-1, 4),
            box_labels=np.array(labels, np.int32).reshape(-1),
            hois=np.array(hois, np.int32).reshape(-1, 4))

    def _boxes(self, where: str, annotations: list) -> tuple[list, list]:
        boxes, labels = [], []
        for i, ann in enumerate(annotations):
            field = f"annotations[{i}]"
            if not isinstance(ann, dict):
                raise AnnotationError(f"{where}: {field} must be an object, got {ann!r}")
            boxes.append(_bbox(where, f"{field}.bbox", ann.get("bbox")))
            coco_id = ann.get("category_id")
            if not _is_int(coco_id) or coco_id not in self.coco_to_obj:
                raise AnnotationError(f"{where}: {field}.category_id {coco_id!r} is not a COCO "
                                      f"id of the '{self.tables.name}' tables")
            labels.append(self.coco_to_obj[coco_id])
        return boxes, labels

    def _hois(self, where: str, hoi_annotation: list, labels: list) -> list:
        rows = []
        for j, hoi in enumerate(hoi_annotation):
            field = f"hoi_annotation[{j}]"
            if not isinstance(hoi, dict):
                raise AnnotationError(f"{where}: {field} must be an object, got {hoi!r}")
            sub = self._box_index(where, f"{field}.subject_id", hoi, labels, allow_none=False)
            if labels[sub] != 0:
                raise AnnotationError(
                    f"{where}: {field}.subject_id {sub} is a "
                    f"'{self.tables.objects[labels[sub]]}' box; subjects must be persons")
            obj = self._box_index(where, f"{field}.object_id", hoi, labels,
                                  allow_none=self.no_object is not None)
            verb = self._verb(where, f"{field}.category_id", hoi.get("category_id"))
            obj_class = self.no_object if obj == -1 else labels[obj]
            rows.append((sub, obj, verb, self._hoi_class(where, field, hoi, verb, obj_class)))
        return rows

    def _box_index(self, where, field, hoi, labels, allow_none: bool) -> int:
        value = hoi.get(field.rsplit(".", 1)[1])
        if _is_int(value) and (0 <= value < len(labels) or (allow_none and value == -1)):
            return value
        allowed = f"[0, {len(labels)})" + (" or -1" if allow_none else "")
        raise AnnotationError(f"{where}: {field} is {value!r}, expected an integer in {allowed}")

    def _verb(self, where, field, value) -> int:
        base = self.tables.verb_id_base
        if not _is_int(value) or not base <= value < base + self.tables.num_verbs:
            raise AnnotationError(f"{where}: {field} (verb id) is {value!r}, expected an integer "
                                  f"in [{base}, {base + self.tables.num_verbs})")
        return value - base

    def _hoi_class(self, where, field, hoi, verb: int, obj_class: int) -> int:
        expected = self.hoi_lookup.get((verb, obj_class))
        if "hoi_category_id" not in hoi and self.no_object is not None:
            if expected is None:
                raise AnnotationError(
                    f"{where}: {field}: (verb {self.tables.verbs[verb]!r}, object "
                    f"{self.tables.objects[obj_class]!r}) is not an HOI class")
            return expected
        value = hoi.get("hoi_category_id")
        if not _is_int(value) or not 1 <= value <= self.tables.num_hois:
            raise AnnotationError(f"{where}: {field}.hoi_category_id is {value!r}, expected an "
                                  f"integer in [1, {self.tables.num_hois}]")
        if value - 1 != expected:
            v, o = self.tables.hois[value - 1]
            raise AnnotationError(
                f"{where}: {field}.hoi_category_id {value} is ({self.tables.verbs[v]!r}, "
                f"{self.tables.objects[o]!r}) but the pair is (verb {self.tables.verbs[verb]!r}, "
                f"object {self.tables.objects[obj_class]!r})")
        return expected


def _list_field(where: str, entry: dict, key: str) -> list:
    value = entry.get(key)
    if not isinstance(value, list):
        raise AnnotationError(f"{where}: field '{key}' must be a list, got {value!r}"[:300])
    return value


def _bbox(where: str, field: str, bbox) -> list:
    """Checks a box: 4 finite numbers. Degenerate boxes pass (see the module docstring)."""
    # type() rather than isinstance(): bools are ints; the sum is finite iff every term is
    # (short of absurd coordinates near 1e308).
    if not (type(bbox) is list and len(bbox) == 4 and all(type(v) in _NUMBERS for v in bbox)
            and math.isfinite(sum(bbox))):
        raise AnnotationError(f"{where}: {field} must be 4 finite numbers [x1, y1, x2, y2], got "
                              f"{bbox!r}")
    return bbox


def _is_int(x) -> bool:
    return type(x) is int  # not bool
