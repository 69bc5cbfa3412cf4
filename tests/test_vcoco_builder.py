"""V-COCO tfds builder: built from a small fake folder in the reference layout (HOIA files with
0-based verb-role ids, no-object roles `object_id = -1`, COCO_train2014 / COCO_val2014 names),
read back with `tfds.data_source` and grain over two processes' shards."""
import json
import logging
import os
import sys

import grain
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hoiclip_jax.lib import config_base as common
from data_pipeline import class_tables, hoi_tfds, sources
from tests import helpers

W, H = 80, 60
TABLES = class_tables.load_class_tables(mlc.ConfigDict(dict(name="vcoco", class_table="")))
NO_OBJECT = TABLES.no_object_index  # 80


def verb(name: str) -> int:
    return TABLES.verbs.index(name)


def coco(obj: str) -> int:
    return TABLES.coco_ids[TABLES.objects.index(obj)]


def entry(name: str, objects: list, boxes: list, hois: list) -> dict:
    """A HOIA record as the reference's conversion writes it: no hoi_category_id."""
    return {"file_name": name,
            "annotations": [{"bbox": b, "category_id": coco(o)} for o, b in zip(objects, boxes)],
            "hoi_annotation": [{"subject_id": s, "object_id": o, "category_id": verb(v)}
                               for s, o, v in hois]}


PERSON = [4, 4, 40, 58]
TRAIN = [
    entry("COCO_train2014_000000000009.jpg", ["person", "cup"], [PERSON, [50, 10, 70, 30]],
          [(0, 1, "hold_obj"), (0, -1, "stand")]),
    # the laptop box reaches past the 80 x 60 image: clamped
    entry("COCO_train2014_000000000025.jpg", ["person", "laptop"], [PERSON, [60, 30, 95, 70]],
          [(0, 1, "work_on_computer_instr"), (0, -1, "walk")]),
    # a zero-width book box: removed with the look_obj HOI on it; the no-object role stays
    entry("COCO_train2014_000000000030.jpg", ["person", "book"], [PERSON, [20, 5, 20, 30]],
          [(0, 1, "look_obj"), (0, -1, "smile")]),
]
TEST = [
    entry("COCO_val2014_000000000042.jpg", ["person", "cup"], [PERSON, [50, 10, 70, 30]],
          [(0, 1, "drink_instr"), (0, -1, "stand")]),
    entry("COCO_val2014_000000000073.jpg", ["person"], [PERSON], [(0, -1, "run")]),  # missing
    entry("COCO_val2014_000000000074.jpg", ["person"], [PERSON], [(0, -1, "walk")]),
]
MISSING = TEST[1]["file_name"]


def write_layout(root: str) -> None:
    for folder, records in (("train2014", TRAIN), ("val2014", TEST)):
        os.makedirs(os.path.join(root, "images", folder))
        for i, r in enumerate(records):
            if r["file_name"] != MISSING:
                pixels = np.random.default_rng(i).integers(0, 255, (H, W, 3), np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, "images", folder,
                                                          r["file_name"]), "JPEG")
    os.makedirs(os.path.join(root, "annotations"))
    for name, records in (("trainval_vcoco.json", TRAIN), ("test_vcoco.json", TEST)):
        with open(os.path.join(root, "annotations", name), "w") as f:
            json.dump(records, f)
    np.save(os.path.join(root, "annotations", "corre_vcoco.npy"), np.ones((29, 81)))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("vcoco")
    d = common.dataset_config("vcoco")
    d.root, d.tfds_data_dir = str(base / "v-coco"), str(base / "tfds")
    write_layout(d.root)
    handler = helpers.ListHandler()
    logging.getLogger().addHandler(handler)
    try:
        sources.prepare(d)
    finally:
        logging.getLogger().removeHandler(handler)
    return d, handler.messages


def test_train_split_roles_and_boxes(built):
    d, _ = built
    split = sources.load_split(d, TABLES, "train")
    assert [r.file_name for r in split.records] == [e["file_name"] for e in TRAIN]
    r0, r1, r2 = split.records
    assert r0.box_labels.tolist() == [0, TABLES.objects.index("cup")]
    assert r0.hois.tolist() == [
        [0, 1, verb("hold_obj"), TABLES.hoi_index(verb("hold_obj"), r0.box_labels[1])],
        [0, -1, verb("stand"), TABLES.hoi_index(verb("stand"), NO_OBJECT)]]
    np.testing.assert_array_equal(r1.boxes, np.array([PERSON, [60, 30, 80, 60]], np.float32))
    # #2: the degenerate book box and its look_obj HOI are gone, the smile role is kept.
    np.testing.assert_array_equal(r2.boxes, np.array([PERSON], np.float32))
    assert r2.hois.tolist() == [[0, -1, verb("smile"), TABLES.hoi_index(verb("smile"),
                                                                          NO_OBJECT)]]
    index = hoi_tfds.read_split_index(sources.tfds_builder(d), "train")
    assert (index.boxes_removed, index.hois_removed) == (1, 1)
    assert split.hoi_counts.sum() == 6 and split.skipped_images == ()


def test_test_split_coco_val_names_and_missing_image(built):
    d, messages = built
    split = sources.load_split(d, TABLES, "test")
    assert [r.file_name for r in split.records] == [TEST[0]["file_name"], TEST[2]["file_name"]]
    assert [r.image_id for r in split.records] == [0, 2]  # index in test_vcoco.json
    assert split.skipped_images == (MISSING,)
    assert any(MISSING in m and "missing" in m for m in messages)
    record, image = split[1]
    assert record.hois.tolist() == [[0, -1, verb("walk"), TABLES.hoi_index(verb("walk"),
                                                                             NO_OBJECT)]]
    assert image.size == (W, H) and image.mode == "RGB"


def test_data_source_and_grain_shards(built):
    d, _ = built
    source = tfds.data_source("vcoco", data_dir=d.tfds_data_dir, split="test")
    assert len(source) == 2
    assert hoi_tfds.record_from_example(source[0]).file_name == TEST[0]["file_name"]
    split = sources.load_split(d, TABLES, "train")
    names = [[r.file_name for r, _ in grain.MapDataset.source(split)[p::2]] for p in range(2)]
    assert names == [[TRAIN[0]["file_name"], TRAIN[2]["file_name"]], [TRAIN[1]["file_name"]]]
    assert "tensorflow" not in sys.modules  # built and read without TensorFlow


def test_zero_shot_needs_hico(built):
    d, _ = built
    d = mlc.ConfigDict(d.to_dict())
    d.zero_shot = "rare_first"
    with pytest.raises(ValueError, match="'vcoco' tables"):
        sources.load_split(d, TABLES, "train")
