"""Zero-shot filtering, fractional sampling and rare / non-rare splits (data_pipeline/splits.py),
and the box clean-up of the builders (hico_reader.clamp_boxes), on hand-made records."""
import random

import ml_collections as mlc
import numpy as np
import pytest

from data_pipeline import class_tables, splits
from data_pipeline.hico_reader import HoiRecord, clamp_boxes

TABLES = class_tables.load_class_tables(mlc.ConfigDict(dict(name="hico", class_table="")))


def record(image_id: int, hois: list, num_boxes: int = 4) -> HoiRecord:
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (num_boxes, 1))
    return HoiRecord(f"img{image_id}.jpg", image_id, boxes, np.zeros(num_boxes, np.int32),
                     np.array(hois, np.int32).reshape(-1, 4))


def row(sub: int, obj: int, hoi: int) -> list:
    return [sub, obj, int(TABLES.hoi_to_verb[hoi]), hoi]


def test_unseen_lists_follow_the_reference():
    """§3.4: sizes, UO = every HOI of 12 objects, UV = every HOI of 20 verbs, RF within rare."""
    sizes = {s: len(splits.unseen_hois(TABLES, s)) for s in splits.ZERO_SHOT_SETTINGS}
    assert sizes == {"none": 0, "rare_first": 120, "non_rare_first": 120, "unseen_object": 100,
                     "unseen_verb": 84}
    objects = {16, 20, 22, 29, 30, 34, 36, 38, 53, 72, 74, 79}
    verbs = {2, 19, 26, 34, 38, 41, 42, 56, 62, 76, 79, 80, 84, 91, 92, 97, 99, 100, 106, 114}
    assert set(splits.unseen_hois(TABLES, "unseen_object").tolist()) == \
        {k for k, (_, o) in enumerate(TABLES.hois) if o in objects}
    assert set(splits.unseen_hois(TABLES, "unseen_verb").tolist()) == \
        {k for k, (v, _) in enumerate(TABLES.hois) if v in verbs}
    assert set(splits.unseen_hois(TABLES, "rare_first").tolist()) <= set(TABLES.rare_hois)
    assert not set(splits.unseen_hois(TABLES, "non_rare_first").tolist()) & \
        set(TABLES.rare_hois)


@pytest.mark.parametrize("setting, num_seen", [("none", 600), ("rare_first", 480),
                                               ("non_rare_first", 480), ("unseen_object", 500),
                                               ("unseen_verb", 516)])
def test_seen_hois(setting, num_seen):
    seen = splits.seen_hois(TABLES, setting)
    assert len(seen) == num_seen and np.all(np.diff(seen) > 0)  # ascending, as the reference
    assert not set(seen.tolist()) & set(splits.unseen_hois(TABLES, setting).tolist())


def test_zero_shot_drops_whole_pairs_then_empty_images():
    unseen = splits.unseen_hois(TABLES, "unseen_object")
    seen = splits.seen_hois(TABLES, "unseen_object")
    u1, u2, s1, s2 = int(unseen[0]), int(unseen[1]), int(seen[0]), int(seen[1])
    records = [
        # pair (0, 1) carries an unseen HOI: its seen row goes too; pair (0, 2) stays;
        # pair (3, 1) is unseen only.
        record(0, [row(0, 1, s1), row(0, 1, u1), row(0, 2, s2), row(3, 1, u2)]),
        record(1, [row(0, 1, u1), row(0, 1, u2)]),  # loses its only pair: dropped
        record(2, []),                               # no HOI to begin with: kept
        record(3, [row(0, 1, s1)]),                   # untouched
    ]
    kept, stats = splits.filter_zero_shot(records, TABLES, "unseen_object")
    assert [r.image_id for r in kept] == [0, 2, 3]
    assert kept[0].hois.tolist() == [row(0, 2, s2)]
    assert kept[0].boxes.shape == (4, 4)  # boxes are kept
    assert kept[2] is records[3]
    assert (stats.pairs_removed, stats.hois_removed, stats.images_removed,
            stats.images_kept, stats.num_unseen_hois) == (3, 5, 1, 3, 100)
    kept, stats = splits.filter_zero_shot(records, TABLES, "none")
    assert kept == records and stats.pairs_removed == stats.images_removed == 0


def test_zero_shot_rejects_unknown_settings():
    with pytest.raises(ValueError, match="dataset.zero_shot"):
        splits.filter_zero_shot([], TABLES, "uc0")


def entries(n: int) -> list:
    return [{"file_name": f"HICO_train2015_{i:08d}.jpg", "i": i} for i in range(n)]


def test_sample_fraction_is_deterministic_nested_and_sized():
    full = entries(1000)
    samples = {p: splits.sample_fraction(full, p, seed=0) for p in splits.FRACTIONS}
    assert {p: len(s) for p, s in samples.items()} == {5: 50, 15: 150, 25: 250, 50: 500}
    assert splits.sample_fraction(full, 5, seed=0) == samples[5]
    for small, large in zip(splits.FRACTIONS, splits.FRACTIONS[1:]):
        assert {e["i"] for e in samples[small]} < {e["i"] for e in samples[large]}
    for sample in samples.values():  # file order is kept
        assert [e["i"] for e in sample] == sorted(e["i"] for e in sample)
    shuffled = random.Random(1).sample(full, len(full))
    assert {e["i"] for e in splits.sample_fraction(shuffled, 5, seed=0)} == \
        {e["i"] for e in samples[5]}  # depends on the names, not on the file order
    other = splits.sample_fraction(full, 5, seed=1)
    assert len(other) == 50 and other != samples[5]
    assert len(splits.sample_fraction(entries(9), 5, seed=0)) == 1  # never empty


def test_fraction_file_names():
    assert splits.fraction_of("trainval_hico.json") == 100
    assert splits.fraction_of("trainval_hico_15%.json") == 15
    with pytest.raises(ValueError, match="dataset.train_file"):
        splits.fraction_of("trainval_hico_1%.json")
    assert "NOT_AUTHORS" in splits.sampled_fraction_name(5, 0)


def test_rare_split_leaves_absent_classes_out():
    counts = np.array([0, 1, 9, 10, 25, 0])
    rare, non_rare = splits.rare_split(counts, threshold=10)
    assert rare.tolist() == [1, 2] and non_rare.tolist() == [3, 4]


def test_clamp_boxes_remaps_hois():
    r = HoiRecord("a.jpg", 0,
                  np.array([[-5, -5, 20, 30], [50, 5, 70, 20], [10, 10, 30, 70]], np.float32),
                  np.array([0, 3, 5], np.int32),
                  np.array([[0, 1, 1, 7], [0, 2, 2, 8], [0, -1, 3, 9], [2, 0, 4, 10]], np.int32))
    clean, boxes_removed, hois_removed = clamp_boxes(r, height=40, width=50)
    # box 1 lies right of the 50-pixel-wide image: removed with the HOI on it.
    np.testing.assert_array_equal(clean.boxes, [[0, 0, 20, 30], [10, 10, 30, 40]])
    assert clean.box_labels.tolist() == [0, 5]
    assert clean.hois.tolist() == [[0, 1, 2, 8], [0, -1, 3, 9], [1, 0, 4, 10]]
    assert (boxes_removed, hois_removed) == (1, 1)
