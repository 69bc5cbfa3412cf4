"""Synthetic data set: HICO-Det layout, determinism, the promised properties, and interactions
that follow from the drawn geometry."""
import collections
import json
import os

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from data_pipeline import class_tables, hico_reader
from data_pipeline.synthetic import generate as synthetic, draw as synthetic_draw
from data_pipeline.synthetic import sampling, scene
from data_pipeline.synthetic.scene import Person, Thing

V = {name: i for i, name in enumerate(scene.VERBS)}
O = {name: i for i, name in enumerate(scene.OBJECTS)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    summary = synthetic.generate(out, seed=3, num_train=24, num_test=8)
    return out, summary


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_hico_layout_and_schema(tiny):
    out, summary = tiny
    ann = os.path.join(out, "annotations")
    assert sorted(os.listdir(ann)) == ["classes.json", "corre_hico.npy", "test_hico.json",
                                       "trainval_hico.json"]
    train = read_json(os.path.join(ann, "trainval_hico.json"))
    assert [r["file_name"] for r in train[:2]] == ["HICO_train2015_00000001.jpg",
                                                   "HICO_train2015_00000002.jpg"]
    assert sorted(os.listdir(os.path.join(out, "images", "test2015")))[0] == \
        "HICO_test2015_00000001.jpg"
    tables = class_tables.load_class_tables(mlc.ConfigDict(dict(
        name="synthetic", class_table=os.path.join(ann, "classes.json"))))
    assert tables.objects[0] == "person" and tables.coco_ids[0] == 1
    assert 20 <= tables.num_hois <= 40 and 5 <= tables.num_verbs <= 7
    assert "no_interaction" in tables.verbs
    corre = np.load(os.path.join(ann, "corre_hico.npy"))
    assert corre.shape == (tables.num_verbs, tables.num_objects) and corre.dtype == bool
    assert {tuple(map(int, vo)) for vo in zip(*np.nonzero(corre))} == set(tables.hois)
    records = hico_reader.read_annotations(os.path.join(ann, "trainval_hico.json"), tables)
    counts = hico_reader.hoi_instance_counts(records, tables.num_hois)
    assert list(tables.rare_hois) == [k for k in range(tables.num_hois) if counts[k] < 10]
    assert summary["train"]["images"] == 24 and summary["test"]["images"] == 8


def test_images_match_annotations(tiny):
    out, _ = tiny
    for r in read_json(os.path.join(out, "annotations", "trainval_hico.json")):
        image = Image.open(os.path.join(out, "images", "train2015", r["file_name"]))
        assert image.mode == "RGB" and 96 <= image.width <= 128 and 96 <= image.height <= 128
        pixels = np.asarray(image, np.int32)
        for a in r["annotations"]:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
            assert x1 - x0 >= 10 and y1 - y0 >= 10
            # Something is drawn inside every box: it differs from the plain background.
            crop = pixels[y0:y1, x0:x1]
            assert np.abs(crop - np.median(pixels, axis=(0, 1))).max() > 60


def test_deterministic_for_a_seed(tmp_path):
    def make(name, seed):
        synthetic.generate(str(tmp_path / name), seed=seed, num_train=6, num_test=2)
        ann = read_json(str(tmp_path / name / "annotations" / "trainval_hico.json"))
        first = (tmp_path / name / "images" / "train2015" / "HICO_train2015_00000003.jpg")
        return ann, first.read_bytes()

    a, b, c = make("a", 7), make("b", 7), make("c", 8)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


@pytest.fixture(scope="module")
def draw_2000():
    """The annotations of 2000 training scenes (sampling only, no drawing)."""
    weights = sampling.intent_weights()
    return [sampling.sample_scene(np.random.default_rng([0, 0, i]), weights)
            for i in range(1, 2001)]


def test_scene_statistics(draw_2000):
    layouts = draw_2000
    pairs = [collections.Counter((p, t) for p, t, _ in lay.triplets) for lay in layouts]
    assert sum(n > 1 for c in pairs for n in c.values()) > 100  # e.g. hold + look_at
    assert max(len(c) for c in pairs) <= 8  # fits the demo's max_pairs
    without = [lay for lay in layouts if not lay.triplets]
    assert any(not lay.persons for lay in without) and any(lay.persons for lay in without)
    assert 0.05 < len(without) / len(layouts) < 0.2
    assert all(len(lay.persons) <= 3 and len(lay.things) <= 3 for lay in layouts)
    assert {len(lay.persons) for lay in layouts} == {0, 1, 2, 3}


def test_long_tail_gives_rare_classes(draw_2000):
    counts = np.zeros(len(scene.HOIS), int)
    for lay in draw_2000:
        for p, t, v in lay.triplets:
            counts[scene.HOI_INDEX[(v, lay.things[t].kind)]] += 1
    rare = counts < synthetic.RARE_THRESHOLD
    assert 0.15 <= rare.mean() <= 0.35
    assert counts[~rare].min() >= 30  # a clear gap between the rare and the other classes


def test_test_split_floor_shows_every_class():
    weights = sampling.intent_weights(floor=synthetic.TEST_WEIGHT_FLOOR)
    seen = set()
    for i in range(1, 301):
        lay = sampling.sample_scene(np.random.default_rng([0, 1, i]), weights)
        seen |= {scene.HOI_INDEX[(v, lay.things[t].kind)] for _, t, v in lay.triplets}
    assert seen == set(range(len(scene.HOIS)))


# ----------------------------------------------------------------------------- hand-checked
def ball_at_hand(p: Person, dx: float = 0.0) -> Thing:
    hx, hy = scene.skeleton(p)["hand"][p.side]
    return Thing(O["ball"], (hx - 1 + dx, hy - 9, hx + 17 + dx, hy + 9))


def verbs(persons, things):
    return {(i, k, scene.VERBS[v]) for i, k, v in scene.derive_interactions(persons, things)}


def test_hand_on_ball_is_hold_and_facing_it_adds_look():
    p = Person(40, 20, 40, "reach", side=1)
    assert verbs([p], [ball_at_hand(p)]) == {(0, 0, "hold")}
    facing = Person(40, 20, 40, "reach", side=1, facing=1)
    assert verbs([facing], [ball_at_hand(facing)]) == {(0, 0, "hold"), (0, 0, "look_at")}
    away = Person(40, 20, 40, "reach", side=1, facing=-1)
    assert verbs([away], [ball_at_hand(away)]) == {(0, 0, "hold")}


def test_far_ball_is_no_interaction_and_near_ball_is_nothing():
    p = Person(40, 20, 40, "stand")
    box = scene.person_box(p)
    far = Thing(O["ball"], (box[2] + 30, 40, box[2] + 48, 58))
    near = Thing(O["ball"], (box[2] + 8, 40, box[2] + 26, 58))
    assert verbs([p], [far]) == {(0, 0, "no_interaction")}
    assert verbs([p], [near]) == set()
    # The reaching arm stops short of a ball 6 px beyond the hand: no hold.
    reach = Person(40, 20, 40, "reach", side=1)
    assert "hold" not in {v for *_, v in verbs([reach], [ball_at_hand(reach, dx=6)])}


def test_arms_up_under_box_is_carry_kick_ride_and_sit():
    p = Person(50, 30, 40, "arms_up")
    hand_y = scene.skeleton(p)["hand"][1][1]
    assert verbs([p], [Thing(O["box"], (40, hand_y - 19, 60, hand_y + 1))]) == {(0, 0, "carry")}
    k = Person(50, 30, 40, "kick", side=-1)
    fx, fy = scene.skeleton(k)["foot"][-1]
    assert verbs([k], [Thing(O["ball"], (fx - 17, fy - 8, fx + 1, fy + 10))]) == {(0, 0, "kick")}
    r = Person(50, 30, 40, "balance")
    assert verbs([r], [Thing(O["board"], (35, 69, 67, 83))]) == {(0, 0, "ride")}
    s = Person(50, 30, 40, "sit")
    hip_y = scene.skeleton(s)["hip"][1]
    assert verbs([s], [Thing(O["chair"], (38, hip_y - 14, 64, hip_y + 16))]) == {(0, 0, "sit_on")}


def test_look_goes_to_the_nearest_thing_on_the_faced_side():
    p = Person(60, 30, 40, "stand", facing=-1)
    left_near = Thing(O["kite"], (20, 40, 38, 64))
    left_far = Thing(O["box"], (0, 80, 10, 90))
    right = Thing(O["ball"], (80, 40, 98, 58))
    assert verbs([p], [left_far, right, left_near]) == {(0, 2, "look_at")}


def test_rendered_colours_and_tight_boxes():
    weights = sampling.intent_weights()
    for i in range(20):
        rng = np.random.default_rng([5, 0, i])
        lay = sampling.sample_scene(rng, weights)
        pic = synthetic_draw.render(lay, rng)
        assert pic.pixels.shape == (lay.height, lay.width, 3)
        for k, p in enumerate(lay.persons):  # placement relies on the analytic person box
            assert np.allclose(pic.boxes[k], scene.person_box(p), atol=1.5)
        for k, t in enumerate(lay.things):
            x0, y0, x1, y1 = pic.boxes[len(lay.persons) + k]
            # The measured box is the drawn extent of the analytic one (within rounding).
            assert np.allclose([x0, y0, x1, y1], t.box, atol=1.5)
            fill = synthetic_draw.COLOURS[scene.OBJECTS[t.kind]][0]
            crop = pic.pixels[y0:y1, x0:x1].astype(int)
            assert (np.abs(crop - fill).max(axis=-1) < 30).any()
        assert pic.triplets == [(p, len(lay.persons) + t, v) for p, t, v in lay.triplets]
