"""HICO-Det tfds builder: built from a small fake folder in the reference layout, read back with
`tfds.data_source` and grain over two processes' shards; counts, class ids, boxes, skipped
images, fractional configs (authors' file and deterministic sample), zero-shot filtering on the
built data, the folder source, and a malformed record stopping the build.

The fake training file (images 64 x 48, HOI memberships asserted in `test_fake_hois_membership`):
  #0 person, horse   ride horse (139: NF, UV) + hold horse (131: NF)   one pair, 2 rows
  #1 person, dog, cup   walk dog (125: UO) | carry cup (295)           two pairs
  #2 person, cup     drink_with cup (296) + hold cup (297: NF)         one pair, 2 rows
  #3 person, airplane   board airplane (0) + wash airplane (8: RF)     one pair, 2 rows
  #4 person, horse   feed horse (129: UV)                              one pair
  #5 person          no HOI
  #6 person, bicycle (clamped to the image), bicycle outside the image (degenerate)
                     ride bicycle (18: NF, UV) | hold bicycle (11) on the degenerate box
  #7 missing image   board airplane
  #8 corrupt image   board airplane
"""
import json
import logging
import os

import grain
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from hoiclip_jax.lib import config_base as common
from data_pipeline import class_tables, hico_det, hoi_tfds, sources, splits
from data_pipeline.hico_reader import AnnotationError
from tests import helpers

W, H = 64, 48
TABLES = class_tables.load_class_tables(mlc.ConfigDict(dict(name="hico", class_table="")))
HOI = {name: k for k, name in enumerate(
    f"{TABLES.verbs[v]} {TABLES.objects[o]}" for v, o in TABLES.hois)}


def coco(obj: str) -> int:
    return TABLES.coco_ids[TABLES.objects.index(obj)]


def entry(i: int, split: str, objects: list, boxes: list, hois: list) -> dict:
    """A PPDM record: `objects` names, `boxes` xyxy, `hois` (sub, obj, 'verb object')."""
    return {"file_name": f"HICO_{split}2015_{i:08d}.jpg", "img_id": i + 1,
            "annotations": [{"bbox": b, "category_id": coco(o)} for o, b in zip(objects, boxes)],
            "hoi_annotation": [{"subject_id": s, "object_id": o,
                                "category_id": TABLES.hois[HOI[name]][0] + 1,
                                "hoi_category_id": HOI[name] + 1} for s, o, name in hois]}


PERSON, THING = [2, 3, 30, 40], [32, 8, 60, 44]
TRAIN = [
    entry(0, "train", ["person", "horse"], [PERSON, THING],
          [(0, 1, "ride horse"), (0, 1, "hold horse")]),
    entry(1, "train", ["person", "dog", "cup"], [PERSON, THING, [10, 10, 20, 20]],
          [(0, 1, "walk dog"), (0, 2, "carry cup")]),
    entry(2, "train", ["person", "cup"], [PERSON, THING],
          [(0, 1, "drink_with cup"), (0, 1, "hold cup")]),
    entry(3, "train", ["person", "airplane"], [PERSON, THING],
          [(0, 1, "board airplane"), (0, 1, "wash airplane")]),
    entry(4, "train", ["person", "horse"], [PERSON, THING], [(0, 1, "feed horse")]),
    entry(5, "train", ["person"], [PERSON], []),
    entry(6, "train", ["person", "bicycle", "bicycle"], [PERSON, [40, 20, 80, 60],
                                                         [70, 10, 90, 30]],
          [(0, 1, "ride bicycle"), (0, 2, "hold bicycle")]),
    entry(7, "train", ["person", "airplane"], [PERSON, THING], [(0, 1, "board airplane")]),
    entry(8, "train", ["person", "airplane"], [PERSON, THING], [(0, 1, "board airplane")]),
]
TEST = [
    entry(0, "test", ["person", "horse"], [PERSON, [30, 5, 70, 50]], [(0, 1, "ride horse")]),
    entry(1, "test", ["person", "cup"], [PERSON, THING], [(0, 1, "hold cup")]),
    entry(2, "test", ["person", "dog"], [PERSON, THING], [(0, 1, "walk dog")]),
]
AUTHORS_25 = [TRAIN[2], TRAIN[4]]  # the "authors'" 25 % file of the fake folder
MISSING, CORRUPT = TRAIN[7]["file_name"], TRAIN[8]["file_name"]


def write_image(path: str, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 255, (H, W, 3), np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def write_layout(root: str, train: list, test: list, authors_25: list | None) -> None:
    """The reference layout (§3.1) with images for every record but MISSING and CORRUPT."""
    for folder, records in (("train2015", train), ("test2015", test)):
        os.makedirs(os.path.join(root, "images", folder))
        for i, r in enumerate(records):
            path = os.path.join(root, "images", folder, r["file_name"])
            if r["file_name"] == CORRUPT:
                with open(path, "wb") as f:
                    f.write(b"\xff\xd8\xff\xe0 not a jpeg")
            elif r["file_name"] != MISSING:
                write_image(path, seed=i + 100 * (folder == "test2015"))
    ann = os.path.join(root, "annotations")
    os.makedirs(ann)
    files = {"trainval_hico.json": train, "test_hico.json": test}
    if authors_25 is not None:
        files["trainval_hico_25%.json"] = authors_25
    for name, records in files.items():
        with open(os.path.join(ann, name), "w") as f:
            json.dump(records, f)
    np.save(os.path.join(ann, "corre_hico.npy"), np.ones((117, 80)))


def dataset_config(root: str, data_dir: str, train_file: str = "trainval_hico.json",
                   zero_shot: str = "none", builder: str = "tfds") -> mlc.ConfigDict:
    d = common.dataset_config("hico")
    d.root, d.tfds_data_dir, d.train_file = root, data_dir, train_file
    d.zero_shot, d.builder = zero_shot, builder
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The fake folder, built once in the configs 'full', 'frac_50' (sampled) and 'frac_25'."""
    base = tmp_path_factory.mktemp("hico")
    root, data_dir = str(base / "hico_20160224_det"), str(base / "tfds")
    write_layout(root, TRAIN, TEST, AUTHORS_25)
    handler = helpers.ListHandler()
    logging.getLogger().addHandler(handler)
    try:
        for train_file in ("trainval_hico.json", "trainval_hico_50%.json",
                           "trainval_hico_25%.json"):
            sources.prepare(dataset_config(root, data_dir, train_file))
    finally:
        logging.getLogger().removeHandler(handler)
    return root, data_dir, handler.messages


def test_fake_hois_membership():
    """The zero-shot memberships the hand counts below rely on."""
    lists = {s: set(TABLES.unseen_hois(s)) for s in splits.ZERO_SHOT_SETTINGS[1:]}
    member = lambda name: {s for s, hois in lists.items() if HOI[name] in hois}
    assert member("ride horse") == {"non_rare_first", "unseen_verb"}
    assert member("hold horse") == member("hold cup") == {"non_rare_first"}
    assert member("walk dog") == {"unseen_object"}
    assert member("wash airplane") == {"rare_first"}
    assert member("feed horse") == {"unseen_verb"}
    assert member("ride bicycle") == {"non_rare_first", "unseen_verb"}
    for name in ("carry cup", "drink_with cup", "board airplane"):
        assert member(name) == set()


def test_full_train_split_counts_ids_and_boxes(built):
    root, data_dir, messages = built
    split = sources.load_split(dataset_config(root, data_dir), TABLES, "train")
    # #7 (missing) and #8 (corrupt) are skipped, counted and logged with their file names.
    assert [r.image_id for r in split.records] == [0, 1, 2, 3, 4, 5, 6]
    assert split.skipped_images == (MISSING, CORRUPT)
    assert any(MISSING in m and "missing" in m for m in messages)
    assert any(CORRUPT in m and "corrupt" in m for m in messages)
    r1 = split.records[1]
    assert r1.file_name == TRAIN[1]["file_name"]
    assert r1.box_labels.tolist() == [0, TABLES.objects.index("dog"), TABLES.objects.index("cup")]
    assert r1.hois.tolist() == [[0, 1, TABLES.verbs.index("walk"), HOI["walk dog"]],
                                [0, 2, TABLES.verbs.index("carry"), HOI["carry cup"]]]
    np.testing.assert_array_equal(r1.boxes, np.array([PERSON, THING, [10, 10, 20, 20]],
                                                     np.float32))
    # #6: the bicycle box is clamped to the 64 x 48 image; the one outside it is removed
    # with the HOI on it.
    r6 = split.records[6]
    np.testing.assert_array_equal(r6.boxes, np.array([PERSON, [40, 20, 64, 48]], np.float32))
    assert r6.hois.tolist() == [[0, 1, TABLES.verbs.index("ride"), HOI["ride bicycle"]]]
    index = hoi_tfds.read_split_index(sources.tfds_builder(dataset_config(root, data_dir)),
                                      "train")
    assert (index.boxes_removed, index.hois_removed) == (1, 1)
    # HOI counts are those of the file as written (skipped images and removed boxes included).
    assert split.hoi_counts[HOI["board airplane"]] == 3
    assert split.hoi_counts[HOI["hold bicycle"]] == 1 and split.hoi_counts.sum() == 13
    image = split.images(split.records[0])
    assert image.mode == "RGB" and image.size == (W, H)


def test_test_split_keeps_file_boxes(built):
    root, data_dir, _ = built
    split = sources.load_split(dataset_config(root, data_dir, zero_shot="unseen_object"),
                               TABLES, "test")
    assert len(split) == 3 and split.skipped_images == ()
    assert split.zero_shot.images_removed == 0  # the test split is never filtered
    np.testing.assert_array_equal(split.records[0].boxes[1], [30, 5, 70, 50])  # not clamped


def test_data_source_examples_and_grain_shards(built):
    root, data_dir, _ = built
    source = tfds.data_source("hico_det/full", data_dir=data_dir, split="train")
    assert len(source) == 7
    for i, original in enumerate(TRAIN[:6]):  # #6 was clamped
        record = hoi_tfds.record_from_example(source[i])
        assert record.file_name == original["file_name"] and record.image_id == i
        np.testing.assert_array_equal(record.boxes, [a["bbox"] for a in original["annotations"]])
        assert int(source[i]["height"]) == H and int(source[i]["width"]) == W
    split = sources.load_split(dataset_config(root, data_dir), TABLES, "train")
    seen = []
    for process in range(2):  # two processes' worth of shards, as the loader slices them
        shard = grain.MapDataset.source(split)[process::2].map(
            lambda item: (item[0].file_name, item[1].size))
        seen.append([name for name, size in shard if size == (W, H)])
    assert len(seen[0]) == 4 and len(seen[1]) == 3 and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(r.file_name for r in split.records)


def test_same_images_as_the_folder(built):
    root, data_dir, _ = built
    tfds_split = sources.load_split(dataset_config(root, data_dir), TABLES, "test")
    folder = sources.load_split(dataset_config(root, data_dir, builder="folder"), TABLES, "test")
    assert [r.file_name for r in folder.records] == [r.file_name for r in tfds_split.records]
    for (a, image_a), (b, image_b) in zip(folder, tfds_split):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.hois, b.hois)
        np.testing.assert_array_equal(np.asarray(image_a), np.asarray(image_b))


def test_folder_source_skips_missing_images(built):
    root, data_dir, _ = built
    split = sources.load_split(dataset_config(root, data_dir, builder="folder"), TABLES, "train")
    # The corrupt file's header is unreadable: skipped at load (corrupt pixel data behind a good
    # header is the loader's business, tests/test_robust_data.py).
    assert split.skipped_images == (MISSING, CORRUPT)
    assert len(split) == 7
    # Boxes clamped and the degenerate one removed with its HOI, as the tfds build does.
    assert (split.boxes_removed, split.hois_removed) == (1, 1)
    tfds_split = sources.load_split(dataset_config(root, data_dir), TABLES, "train")
    for a, b in zip(split.records, tfds_split.records, strict=True):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.hois, b.hois)


@pytest.mark.parametrize("setting, pairs, rows, images", [
    ("none", 0, 0, 0),
    ("rare_first", 1, 2, 1),        # #3's pair (wash airplane): #3 left empty
    ("non_rare_first", 3, 5, 3),    # pairs of #0, #2, #6: all three left empty
    ("unseen_object", 1, 1, 0),     # #1's walk-dog pair; its carry-cup pair stays
    ("unseen_verb", 3, 4, 3),       # #0 (ride), #4 (feed), #6 (ride): all left empty
])
def test_zero_shot_on_the_built_split(built, setting, pairs, rows, images):
    root, data_dir, _ = built
    split = sources.load_split(dataset_config(root, data_dir, zero_shot=setting), TABLES,
                               "train")
    stats = split.zero_shot
    assert (stats.pairs_removed, stats.hois_removed, stats.images_removed) == \
        (pairs, rows, images)
    assert stats.images_kept == len(split) == 7 - images
    unseen = set(splits.unseen_hois(TABLES, setting).tolist())
    assert not any(int(k) in unseen for r in split.records for k in r.hois[:, 3])


def test_fraction_sampled_when_the_authors_file_is_missing(built):
    root, data_dir, messages = built
    d = dataset_config(root, data_dir, "trainval_hico_50%.json")
    index = hoi_tfds.read_split_index(sources.tfds_builder(d), "train")
    assert index.source == "sampled"
    assert "SAMPLED_NOT_AUTHORS" in index.annotation_file
    assert any("NOT the authors' subset" in m for m in messages)
    sampled = splits.sample_fraction(TRAIN, 50, hico_det.SAMPLE_SEED)
    assert len(sampled) == 5  # round(9 * 50 %)
    path = os.path.join(sources.tfds_builder(d).data_dir, index.annotation_file)
    with open(path) as f:
        assert json.load(f) == sampled  # the file kept with the data set is the sample
    split = sources.load_split(d, TABLES, "train")
    expected = [e["file_name"] for e in sampled if e["file_name"] not in (MISSING, CORRUPT)]
    assert [r.file_name for r in split.records] == expected
    # Rare / non-rare come from the subset in use: its counts, not the full file's.
    counts = np.zeros(TABLES.num_hois, int)
    for e in sampled:
        for h in e["hoi_annotation"]:
            counts[h["hoi_category_id"] - 1] += 1
    np.testing.assert_array_equal(split.hoi_counts, counts)


def test_fraction_uses_the_authors_file(built):
    root, data_dir, _ = built
    d = dataset_config(root, data_dir, "trainval_hico_25%.json")
    split = sources.load_split(d, TABLES, "train")
    assert [r.file_name for r in split.records] == [e["file_name"] for e in AUTHORS_25]
    assert [r.image_id for r in split.records] == [0, 1]  # indices in the 25 % file
    assert hoi_tfds.read_split_index(sources.tfds_builder(d), "train").source == "authors"
    rare, non_rare = splits.rare_split(split.hoi_counts, threshold=2)
    assert sorted(rare.tolist()) == sorted([HOI["drink_with cup"], HOI["hold cup"],
                                            HOI["feed horse"]])
    assert non_rare.size == 0
    assert len(sources.load_split(d, TABLES, "test")) == 3


def test_malformed_record_stops_the_build(tmp_path):
    bad = json.loads(json.dumps(TRAIN[:3]))
    bad[2]["hoi_annotation"][1]["object_id"] = 5  # image #2 has 2 boxes
    root, data_dir = str(tmp_path / "hico_20160224_det"), str(tmp_path / "tfds")
    write_layout(root, bad, TEST, None)
    d = dataset_config(root, data_dir)
    with pytest.raises(AnnotationError) as error:
        sources.prepare(d)
    message = str(error.value)
    assert "trainval_hico.json" in message and "image #2" in message
    assert TRAIN[2]["file_name"] in message and "hoi_annotation[1].object_id" in message
    assert not sources.tfds_builder(d).is_prepared()


def test_split_without_readable_images_stops_the_build(tmp_path):
    root, data_dir = str(tmp_path / "hico_20160224_det"), str(tmp_path / "tfds")
    write_layout(root, [TRAIN[7], TRAIN[8]], TEST, None)  # missing and corrupt
    with pytest.raises(ValueError, match="none of its 2 images could be read"):
        sources.prepare(dataset_config(root, data_dir))


def test_config_errors(tmp_path):
    d = dataset_config(str(tmp_path), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not built"):
        sources.load_split(d, TABLES, "train")
    d.zero_shot = "rare"
    with pytest.raises(ValueError, match="dataset.zero_shot"):
        sources.load_split(d, TABLES, "train")
    d.zero_shot, d.train_file = "none", "trainval_hico_7%.json"
    with pytest.raises(ValueError, match="dataset.train_file"):
        sources.load_split(d, TABLES, "train")
    d.train_file, d.test_images = "trainval_hico.json", "val"
    with pytest.raises(ValueError, match="dataset.test_images"):
        sources.load_split(d, TABLES, "train")
