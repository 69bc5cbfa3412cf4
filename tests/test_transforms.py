"""Example construction: boxes follow the pixels through flips, crops and resizes, crops drop the
pairs they cut away, shapes are static for every bucket, the 'light' path is the demo's frozen one,
targets."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from configs import demo
from hoiclip_jax.lib import config_base as common
from data_pipeline import augment, class_tables, transforms
from data_pipeline.hico_reader import HoiRecord
from tests import frozen_light_transforms as frozen

RED = (230, 20, 20)
BLUE = (20, 20, 230)


def without_verb_labels(example: dict) -> dict:
    """The frozen copy still makes `verb_labels`, which nothing read and the live path dropped."""
    return {k: v for k, v in example.items() if k != "verb_labels"}


@pytest.fixture(scope="module")
def tables():
    # A small table in the synthetic schema; the V-COCO one is loaded where needed.
    return class_tables.ClassTables(
        name="toy", verbs=("hold", "look", "ride"), objects=("person", "ball", "horse"),
        coco_ids=(1, 37, 19), hois=((0, 1), (1, 1), (2, 2), (1, 2)),
        hoi_prompts=("a", "b", "c", "d"), object_prompts=("p", "b", "h", "nothing"),
        rare_hois=())


def dataset(canvas=(128, 128), max_side=128, shorts=(112, 120, 128), test_short=128,
            flip=0.5, jitter=0.1, max_pairs=8, clip=64):
    """The demo's dataset config ('light') with test sizes."""
    d = demo.get_config().dataset
    d.canvas, d.max_side, d.train_short_sides = canvas, max_side, shorts
    d.test_short_side, d.flip_prob, d.color_jitter = test_short, flip, jitter
    d.max_pairs, d.clip_image_size = max_pairs, clip
    return d


def reference(scale=0.1, flip=0.5, jitter=0.4, multiscale=0.5, buckets=(), max_pairs=8,
              clip=64):
    """The HICO dataset config ('reference' augmentation), every size times `scale` (0.1 keeps
    the tests fast and exercises the same code)."""
    d = common.dataset_config("hico")
    s = lambda v: int(round(v * scale))
    d.canvas, d.max_side = (s(1333), s(1333)), s(1333)
    d.train_short_sides = tuple(s(v) for v in d.train_short_sides)
    d.test_short_side = s(800)
    d.crop_resize_sides = tuple(s(v) for v in d.crop_resize_sides)
    d.crop_size = tuple(s(v) for v in d.crop_size)
    d.flip_prob, d.color_jitter, d.multiscale_prob = flip, jitter, multiscale
    d.buckets, d.max_pairs, d.clip_image_size = buckets, max_pairs, clip
    return d


def record(boxes, labels, hois, image_id=3):
    return HoiRecord("img.jpg", image_id, np.array(boxes, np.float32).reshape(-1, 4),
                     np.array(labels, np.int32), np.array(hois, np.int32).reshape(-1, 4))


def picture(w=100, h=80, red_box=(30, 20, 60, 50), blue_box=None):
    image = Image.new("RGB", (w, h), (200, 200, 200))
    draw = ImageDraw.Draw(image)
    for box, colour in ((red_box, RED), (blue_box, BLUE)):
        if box is not None:
            x0, y0, x1, y1 = box
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)  # pixels [x0, x1)
    return image


def denormalize(example):
    return example["image"] * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN


def xyxy_pixels(cxcywh, w, h):
    cx, cy, bw, bh = cxcywh * np.array([w, h, w, h])
    return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


def resized_hw(example):
    mask = example["pixel_mask"]
    return int(mask[:, 0].sum()), int(mask[0].sum())


def strength(rgb, channel):
    """How strongly each pixel has the hue of `channel` (0 red, 2 blue): 0 on grey."""
    return rgb[..., channel] - np.delete(rgb, channel, axis=-1).max(-1)


def colour_extent(example, channel, full):
    """xyxy pixel extent of the pixels at least half as strongly coloured as the drawn colour
    after the jitter (`full`), or None when there are none."""
    s = strength(denormalize(example), channel)
    ys, xs = np.nonzero((s > full / 2) & example["pixel_mask"])
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def jittered_strength(colour, channel, jitter):
    """`strength` of a flat `colour` after the plan's jitter: what a fully covered pixel has."""
    image = Image.new("RGB", (2, 2), colour)
    sample = augment.Sample(image, np.zeros((0, 4)), np.zeros(0), np.zeros((0, 4)))
    rgb = np.asarray(augment.enhance(sample, jitter).image, np.float32) / 255.0
    return float(strength(rgb, channel)[0, 0])


# ----------------------------------------------------------------------------- 'light' (demo)
LIGHT_CASES = [  # (image size, boxes, labels, HOIs): a box out of the image, clamped boxes
    ((100, 80), [[30, 20, 60, 50], [65, 10, 95, 70]], [0, 1], [[0, 1, 0, 0]]),
    ((118, 126), [[10, 10, 30, 60], [40, 20, 60, 40], [50, 50, 140, 130], [120, 5, 130, 9]],
     [0, 1, 2, 2], [[0, 1, 0, 0], [0, 2, 2, 2], [0, 1, 1, 1], [0, 3, 1, 3]]),
    ((127, 111), [[0, 0, 127, 111], [5, 5, 50, 50]], [0, 2], [[0, 1, 2, 2], [1, 0, 1, 3]]),
]


def light_configs():
    yield demo.get_config().dataset  # the demo itself
    yield dataset(jitter=0.4)
    yield dataset(shorts=(80,), flip=1.0, jitter=0.0)


@pytest.mark.parametrize("case", range(len(LIGHT_CASES)))
def test_light_path_is_bit_identical_to_the_frozen_demo_code(tables, case):
    (w, h), boxes, labels, hois = LIGHT_CASES[case]
    rng = np.random.default_rng(case)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    rec = record(boxes, labels, hois)
    for d in light_configs():
        assert d.augmentation == "light"
        for seed in range(4):
            new = transforms.train_example(image, rec, tables, d, np.random.default_rng(seed))
            old = without_verb_labels(
                frozen.train_example(image, rec, tables, d, np.random.default_rng(seed)))
            assert new.keys() == old.keys()
            for k in old:
                assert new[k].dtype == old[k].dtype and np.array_equal(new[k], old[k]), k
        new, old = (m.test_example(image, rec, tables, d) for m in (transforms, frozen))
        old = without_verb_labels(old)
        assert new.keys() == old.keys() and all(np.array_equal(new[k], old[k]) for k in old)


@pytest.mark.parametrize("seed", range(6))
def test_boxes_cover_the_drawn_pixels(tables, seed):
    rec = record([[30, 20, 60, 50], [65, 10, 95, 70]], [0, 1], [[0, 1, 0, 0]])
    ex = transforms.train_example(picture(), rec, tables, dataset(jitter=0.0),
                                  np.random.default_rng(seed))
    h, w = resized_hw(ex)
    box = xyxy_pixels(ex["sub_boxes"][0], w, h)
    # The box follows the drawn rectangle to within the blur of one bilinear pixel.
    np.testing.assert_allclose(box, colour_extent(ex, 0, jittered_strength(RED, 0, ())),
                               atol=1.5)


def test_flip_mirrors_boxes(tables):
    # Short side 80 = the image's: no resize, so the flip is exact in pixels.
    d = dataset(shorts=(80,), flip=1.0, jitter=0.0)
    rec = record([[30, 20, 60, 50], [65, 10, 95, 70]], [0, 1], [[0, 1, 0, 0]])
    ex = transforms.train_example(picture(), rec, tables, d, np.random.default_rng(0))
    assert resized_hw(ex) == (80, 100)
    np.testing.assert_allclose(xyxy_pixels(ex["sub_boxes"][0], 100, 80), [40, 20, 70, 50],
                               atol=1e-4)
    np.testing.assert_allclose(xyxy_pixels(ex["obj_boxes"][0], 100, 80), [5, 10, 35, 70],
                               atol=1e-4)
    rgb = denormalize(ex)
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3)
    assert red[30, 40] and red[30, 69] and not red[30, 39] and not red[30, 70]  # x in [40, 70)


@pytest.mark.parametrize("size", [(100, 80), (60, 200), (300, 90), (128, 128)])
def test_shapes_are_static_and_mask_matches_the_resized_size(tables, size):
    w, h = size
    rec = record([[2, 2, 20, 30], [25, 5, 40, 40]], [0, 2], [[0, 1, 2, 2], [0, 1, 1, 3]])
    d = dataset()
    image = Image.new("RGB", (w, h), (10, 20, 30))
    for ex in (transforms.train_example(image, rec, tables, d, np.random.default_rng(1)),
               transforms.test_example(image, rec, tables, d)):
        assert shapes(ex) == contract(128, 128, tables)
        hh, ww = resized_hw(ex)
        assert ex["pixel_mask"].sum() == hh * ww and ex["pixel_mask"][:hh, :ww].all()
        # The short side is one of the choices unless the long side hit max_side (to within
        # the rounding of the short side, as DETR's resize).
        assert max(hh, ww) <= 128 and (min(hh, ww) in (112, 120, 128) or max(hh, ww) >= 126)
        assert np.all(ex["image"][hh:] == 0) and np.all(ex["image"][:, ww:] == 0)
        assert ex["orig_size"].tolist() == [h, w] and ex["image_id"] == 3
    test_hw = resized_hw(transforms.test_example(image, rec, tables, d))
    assert test_hw[::-1] == augment.resized_size(w, h, 128, 128)


def shapes(example):
    return {k: (np.shape(v), np.asarray(v).dtype) for k, v in example.items()}


def contract(canvas_h, canvas_w, tables, clip=64, m=8):
    return {"image": ((canvas_h, canvas_w, 3), np.float32),
            "pixel_mask": ((canvas_h, canvas_w), bool), "clip_image": ((clip, clip, 3), np.float32),
            "sub_boxes": ((m, 4), np.float32), "obj_boxes": ((m, 4), np.float32),
            "obj_labels": ((m,), np.int32), "obj_exists": ((m,), bool),
            "hoi_labels": ((m, tables.num_hois), np.float32),
            "pair_mask": ((m,), bool),
            "image_id": ((), np.int32), "orig_size": ((2,), np.int32)}


def test_resized_size_caps_the_long_side():
    # Capped by the long side: short side round(128 * 80 / 100) = 102, long int(127.5).
    assert augment.resized_size(100, 80, 120, 128) == (127, 102)
    assert augment.resized_size(100, 80, 96, 128) == (120, 96)
    assert augment.resized_size(80, 100, 100, 1333) == (100, 125)
    assert augment.resized_size(640, 480, 800, 1333) == (1066, 800)
    assert augment.resized_size(2000, 400, 800, 1333) == (1333, 267)
    assert augment.resized_size(2000, 400, 800, None) == (4000, 800)  # no cap


def test_canvas_too_small_is_an_error(tables):
    rec = record([[2, 2, 20, 30]], [0], [])
    with pytest.raises(ValueError, match="img.jpg.*does not fit the canvas 64x64"):
        transforms.test_example(picture(), rec, tables, dataset(canvas=(64, 64)))


def test_pair_targets_multi_hot_and_clamped_boxes(tables):
    # Pair (0, 1) has two verbs; box 2 is clamped; box 3 lies outside the image and its HOI
    # is dropped with it.
    rec = record([[10, 10, 30, 60], [40, 20, 60, 40], [50, 50, 140, 90], [120, 5, 130, 9]],
                 [0, 1, 2, 2], [[0, 1, 0, 0], [0, 2, 2, 2], [0, 1, 1, 1], [0, 3, 1, 3]])
    ex = transforms.test_example(picture(), rec, tables, dataset(test_short=80, max_side=100))
    assert ex["pair_mask"].tolist() == [True, True] + [False] * 6
    assert ex["hoi_labels"][0].tolist() == [1, 1, 0, 0]
    assert ex["hoi_labels"][1].tolist() == [0, 0, 1, 0] and ex["obj_labels"][:2].tolist() == [1, 2]
    np.testing.assert_allclose(xyxy_pixels(ex["obj_boxes"][1], 100, 80), [50, 50, 100, 80],
                               atol=1e-4)
    assert ex["obj_exists"].tolist() == [True, True] + [False] * 6
    assert not ex["sub_boxes"][2:].any() and not ex["hoi_labels"][2:].any()


def test_pairs_beyond_max_pairs_are_dropped(tables):
    boxes = [[0, 0, 10, 10]] + [[10 + 5 * i, 10, 20 + 5 * i, 20] for i in range(5)]
    hois = [[0, 1 + i, 0, 0] for i in range(5)]
    ex = transforms.test_example(picture(), record(boxes, [0] + [1] * 5, hois), tables,
                                 dataset(max_pairs=3))
    assert ex["pair_mask"].tolist() == [True] * 3


def test_vcoco_no_object_pair():
    vcoco = class_tables.ClassTables(
        name="vcoco-toy", verbs=("stand", "hold"), objects=("person", "cup", "no_object"),
        coco_ids=(1, 47), hois=((0, 2), (1, 1)), hoi_prompts=("s", "h"),
        object_prompts=("p", "c", "n", "nothing"), rare_hois=())
    rec = record([[10, 10, 30, 60], [40, 20, 60, 40]], [0, 1], [[0, -1, 0, 0], [0, 1, 1, 1]])
    for ex in (transforms.test_example(picture(), rec, vcoco, dataset()),
               transforms.train_example(picture(), rec, vcoco, reference(scale=0.2),
                                        np.random.default_rng(1))):
        assert ex["pair_mask"][:2].all()
        assert ex["obj_exists"][:2].tolist() == [False, True]
        assert ex["obj_labels"][:2].tolist() == [vcoco.no_object_index, 1] == [2, 1]
        assert not ex["obj_boxes"][0].any() and ex["sub_boxes"][0].any()


def test_deterministic_given_the_generator(tables):
    rec = record([[30, 20, 60, 50]], [0], [])
    for d in (dataset(jitter=0.4), reference()):
        a, b, c = (transforms.train_example(picture(), rec, tables, d, np.random.default_rng(s))
                   for s in (5, 5, 6))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert not np.array_equal(a["image"], c["image"])


def test_light_color_jitter_keeps_grey_and_changes_colour():
    image = Image.new("RGB", (20, 10), (120, 60, 30))
    sample = augment.Sample(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                               np.zeros((0, 4), np.int32))
    plan = augment.light_plan(np.random.default_rng(0), 20, 10, dataset(jitter=0.4))
    out = augment.float_jitter(sample, plan.jitter).image
    pixels = np.asarray(out).reshape(-1, 3)
    assert out.size == image.size and (pixels == pixels[0]).all()  # a flat image stays flat
    assert np.abs(np.asarray(out, int) - [120, 60, 30]).max() > 3


def test_clip_view_centre_crop_and_normalisation():
    image = Image.new("RGB", (120, 60), (0, 0, 255))
    ImageDraw.Draw(image).rectangle([30, 0, 89, 59], fill=(255, 0, 0))  # the central square
    view = transforms.clip_view(image, 32)
    assert view.shape == (32, 32, 3) and view.dtype == np.float32
    red = (np.array([1.0, 0, 0], np.float32) - transforms.CLIP_MEAN) / transforms.CLIP_STD
    np.testing.assert_allclose(view[4:-4, 4:-4], np.broadcast_to(red, (24, 24, 3)), atol=0.05)


# ----------------------------------------------------------------------------- 'reference'
def sample_of(image, rec):
    return augment.Sample(image, rec.boxes, rec.box_labels, rec.hois)


def test_reference_jitter_is_torchvision_pil_colorjitter():
    # ImageEnhance blends in 8 bits and truncates: hand-computed from v' = d + f * (v - d).
    flat = lambda rgb: augment.Sample(Image.new("RGB", (4, 3), rgb), np.zeros((0, 4)),
                                         np.zeros(0), np.zeros((0, 4)))
    pixel = lambda s, jitter: augment.enhance(s, jitter).image.getpixel((0, 0))
    assert pixel(flat((201, 101, 51)), ((0, 0.7),)) == (140, 70, 35)   # brightness, d = 0
    assert pixel(flat((200, 100, 50)), ((0, 1.4),)) == (255, 140, 70)  # clipped at 255
    # grey level of (120, 60, 30) = 75 (PIL 'L'): contrast blends with it, saturation too
    assert pixel(flat((120, 60, 30)), ((1, 0.5),)) == (97, 67, 52)
    assert pixel(flat((120, 60, 30)), ((2, 1.4),)) == (138, 54, 12)
    # the order of the ops matters and is the plan's: brightness then contrast, and back
    assert pixel(flat((120, 60, 30)), ((0, 0.5), (1, 1.5))) != \
        pixel(flat((120, 60, 30)), ((1, 1.5), (0, 0.5)))


def test_reference_plans_draw_both_branches_and_every_op(tables):
    d = reference(scale=1.0)
    plans = [augment.reference_plan(np.random.default_rng(s), 640, 480, d)
             for s in range(400)]
    crops = [p for p in plans if len(p.geometry) == 3]
    assert 150 < len(crops) < 250  # RandomSelect(p = 0.5)
    assert 150 < sum(p.flip for p in plans) < 250
    for p in plans:
        assert sorted(op for op, _ in p.jitter) == [0, 1, 2]
        assert all(0.6 <= f <= 1.4 for _, f in p.jitter)
        assert max(p.size) <= 1333
    for p in crops:
        (_, first), (_, (left, top, cw, ch)), (_, size) = p.geometry
        assert min(first) in (400, 500, 600) and 384 <= cw <= 600 and 384 <= ch <= 600
        assert 0 <= left <= first[0] - cw and 0 <= top <= first[1] - ch
        assert min(size) in d.train_short_sides
    for p in plans:
        if len(p.geometry) == 1:
            assert min(p.size) in d.train_short_sides or max(p.size) == 1333


def test_reference_boxes_follow_the_drawn_pixels_through_flips_crops_and_resizes(tables):
    """Over many seeds: each kept box covers its drawn rectangle (and no more than a pixel of
    resampling beyond it, also where a crop cut it); a pair whose box the crop removed is
    dropped."""
    rec = record([[40, 30, 100, 95], [110, 20, 150, 60]], [0, 1], [[0, 1, 0, 0]])
    image = picture(160, 120, red_box=(40, 30, 100, 95), blue_box=(110, 20, 150, 60))
    d = reference(scale=0.1)
    seen = {"crop": 0, "dropped": 0, "cut": 0}
    for seed in range(80):
        rng = np.random.default_rng(seed)
        plan = augment.reference_plan(np.random.default_rng(seed), 160, 120, d)
        ex = transforms.train_example(image, rec, tables, d, rng)
        h, w = resized_hw(ex)
        assert (w, h) == plan.size
        seen["crop"] += len(plan.geometry) == 3
        red = colour_extent(ex, 0, jittered_strength(RED, 0, plan.jitter))
        blue = colour_extent(ex, 2, jittered_strength(BLUE, 2, plan.jitter))
        if not ex["pair_mask"][0]:
            seen["dropped"] += 1
            # a box gone: its colour is gone from the image, but for a sliver under 2 pixels
            thin = lambda e: e is None or min(e[2:] - e[:2]) <= 2
            assert thin(red) or thin(blue), f"seed {seed}: {red}, {blue}"
            continue
        for box, drawn in ((ex["sub_boxes"][0], red), (ex["obj_boxes"][0], blue)):
            box = xyxy_pixels(box, w, h)
            if min(box[2:] - box[:2]) < 2:  # a sliver left by a crop: too thin to see
                continue
            seen["cut"] += bool(box[0] < 0.5 or box[1] < 0.5 or box[2] > w - 0.5
                                or box[3] > h - 0.5)
            np.testing.assert_allclose(box, drawn, atol=1.0, err_msg=f"seed {seed}")
    # the seeds exercise crops, crops that drop the pair and crops that cut a box
    assert seen["crop"] > 20 and seen["dropped"] > 2 and seen["cut"] > 2, seen


@pytest.mark.parametrize("seed", range(3))
def test_reference_boxes_on_a_hico_sized_image(tables, seed):
    rec = record([[200, 120, 420, 400]], [0], [[0, 0, 0, 0]])
    image = picture(640, 480, red_box=(200, 120, 420, 400))
    d = reference(scale=1.0, multiscale=[1.0, 0.0, 0.0][seed], max_pairs=4)
    plan = augment.reference_plan(np.random.default_rng(seed), 640, 480, d)
    ex = transforms.train_example(image, rec, tables, d, np.random.default_rng(seed))
    h, w = resized_hw(ex)
    assert ex["image"].shape == (1333, 1333, 3) and min(h, w) in d.train_short_sides
    assert ex["pair_mask"][0]  # these seeds keep the box
    box = xyxy_pixels(ex["sub_boxes"][0], w, h)
    np.testing.assert_allclose(box, colour_extent(ex, 0, jittered_strength(RED, 0, plan.jitter)),
                               atol=1.0)


def test_crop_drops_the_boxes_it_removes_and_their_pairs():
    # Boxes: 0 person (kept), 1 ball (cut in half by the crop), 2 horse (outside the crop);
    # HOIs (0, 1) and (0, 2); a person-only HOI with no object (-1) survives the crop.
    rec = record([[10, 10, 40, 70], [50, 20, 90, 40], [100, 10, 140, 60]], [0, 1, 2],
                 [[0, 1, 0, 0], [0, 2, 2, 2], [0, -1, 1, 1]])
    out = augment.crop(sample_of(picture(160, 80), rec), (5, 0, 65, 80))
    assert out.image.size == (65, 80)
    np.testing.assert_allclose(out.boxes, [[5, 10, 35, 70], [45, 20, 65, 40]])
    assert out.labels.tolist() == [0, 1]
    assert out.hois.tolist() == [[0, 1, 0, 0], [0, -1, 1, 1]]
    # a crop that removes the subject drops every pair of it
    out = augment.crop(sample_of(picture(160, 80), rec), (45, 0, 100, 80))
    assert out.labels.tolist() == [1, 2] and out.hois.tolist() == []


def test_crop_removing_a_box_drops_the_pair_in_the_example(tables):
    rec = record([[10, 10, 40, 70], [50, 20, 90, 40], [100, 10, 140, 60]], [0, 1, 2],
                 [[0, 1, 0, 0], [0, 2, 2, 2]])
    plan = augment.Plan(False, (), (("crop", (0, 0, 95, 80)),), (95, 80))
    sample = augment.apply_plan(sample_of(picture(160, 80), rec), plan, augment.enhance)
    ex = transforms.finalize(sample, (80, 160), rec, tables, reference(scale=0.1))
    assert ex["pair_mask"].tolist() == [True] + [False] * 7
    assert ex["obj_labels"][0] == 1 and ex["hoi_labels"][0].tolist() == [1, 0, 0, 0]


def test_first_boxes_keeps_the_reference_number_of_boxes(tables):
    boxes = [[i, 0, i + 5, 5] for i in range(70)]
    hois = [[0, 3, 0, 0], [0, 65, 1, 1], [66, 2, 2, 2]]
    out = augment.first_boxes(sample_of(picture(), record(boxes, [0] * 70, hois)), 64)
    assert len(out.boxes) == 64 and out.hois.tolist() == [[0, 3, 0, 0]]
    d = reference(scale=0.1)
    assert d.max_boxes == 64  # = num_queries, as the reference


def test_reference_clip_view_is_made_from_the_augmented_image(tables):
    # Flip, no jitter, no resize (short side 80 = the image's): the view is of the flipped image.
    image = picture(120, 80, red_box=(0, 0, 40, 80))
    d = reference(scale=0.1, flip=1.0, jitter=0.0, multiscale=1.0)
    d.train_short_sides = (80,)
    ex = transforms.train_example(image, record([[0, 0, 40, 80]], [0], []), tables, d,
                                  np.random.default_rng(0))
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(ex["clip_image"], transforms.clip_view(flipped, 64))
    assert ex["clip_image"].shape == (64, 64, 3) and ex["clip_image"].dtype == np.float32
    # CLIP mean/std: the view's right edge is red, its left edge the grey background
    grey = (np.full(3, 200 / 255, np.float32) - transforms.CLIP_MEAN) / transforms.CLIP_STD
    np.testing.assert_allclose(ex["clip_image"][32, 0], grey, atol=1e-5)
    assert ex["clip_image"][32, -1, 0] > 1.5 and ex["clip_image"][32, -1, 1] < -1.0


def test_output_size_predicts_the_example_size(tables):
    rec = record([[2, 2, 20, 30]], [0], [[0, 0, 0, 0]])
    for d in (dataset(jitter=0.4), reference(scale=0.1)):
        for (w, h), seed in zip([(100, 80), (60, 130), (150, 50), (90, 90)] * 3, range(12)):
            image = Image.new("RGB", (w, h))
            ex = transforms.train_example(image, rec, tables, d, np.random.default_rng(seed))
            size = transforms.train_output_size((w, h), d, np.random.default_rng(seed))
            assert resized_hw(ex)[::-1] == size
            assert resized_hw(transforms.test_example(image, rec, tables, d))[::-1] == \
                transforms.test_output_size((w, h), d)


def test_batch_canvas_picks_the_smallest_bucket_that_holds_the_batch():
    d = reference(scale=0.1, buckets=((80, 112), (112, 80), (112, 112), (96, 96), (200, 200)))
    assert tuple(d.canvas) == (133, 133)
    assert transforms.batch_canvas([(100, 70), (90, 75)], d) == (80, 112)
    assert transforms.batch_canvas([(60, 100)], d) == (112, 80)
    assert transforms.batch_canvas([(90, 90)], d) == (96, 96)      # smaller area than 80 x 112
    assert transforms.batch_canvas([(100, 70), (60, 100)], d) == (112, 112)
    assert transforms.batch_canvas([(120, 70)], d) == (133, 133)   # (200, 200) exceeds canvas
    with pytest.raises(ValueError, match="larger than dataset.canvas"):
        transforms.batch_canvas([(140, 70)], d)


@pytest.mark.parametrize("bucket", [(80, 112), (112, 80), (112, 112), (133, 133)])
def test_shapes_are_static_for_every_bucket(tables, bucket):
    d = reference(scale=0.1, buckets=((80, 112), (112, 80), (112, 112)))
    rec = record([[2, 2, 20, 30], [25, 5, 40, 40]], [0, 2], [[0, 1, 2, 2]])
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    w, h = transforms.test_output_size((64, 48), d)
    examples = [transforms.test_example(image, rec, tables, d, bucket)] \
        if h <= bucket[0] and w <= bucket[1] else []
    for seed in range(20):
        w, h = transforms.train_output_size((64, 48), d, np.random.default_rng(seed))
        if h <= bucket[0] and w <= bucket[1]:
            examples.append(transforms.train_example(image, rec, tables, d,
                                                     np.random.default_rng(seed), bucket))
    assert len(examples) > 1
    for ex in examples:
        assert shapes(ex) == contract(*bucket, tables)
        hh, ww = resized_hw(ex)
        assert ex["pixel_mask"].sum() == hh * ww and not ex["image"][hh:].any()


def test_config_checks_name_the_field():
    d = reference()
    for field, value, match in (("augmentation", "full", "dataset.augmentation"),
                                ("buckets", ((100, 0),), "dataset.buckets"),
                                ("crop_size", (70, 60), "dataset.crop_size"),
                                ("multiscale_prob", 1.5, "dataset.multiscale_prob")):
        bad = d.copy_and_resolve_references()
        bad[field] = value
        with pytest.raises(ValueError, match=match):
            transforms.check_dataset_config(bad)
    for name in ("hico", "vcoco", "synthetic"):
        transforms.check_dataset_config(common.dataset_config(name))
    transforms.check_dataset_config(demo.get_config().dataset)
    assert demo.get_config().dataset.augmentation == "light"
    assert common.dataset_config("hico").augmentation == "reference"


def test_out_receives_the_image_and_must_match_the_canvas(tables):
    rec = record([[2, 2, 20, 30]], [0], [[0, 0, 0, 0]])
    d = reference(scale=0.1)
    out = np.zeros((112, 112, 3), np.float32)
    ex = transforms.test_example(picture(), rec, tables, d, (112, 112), out)
    assert ex["image"] is out and out.any()
    np.testing.assert_array_equal(out, transforms.test_example(picture(), rec, tables, d,
                                                               (112, 112))["image"])
    with pytest.raises(ValueError, match=r"out: \(112, 112, 3\) float32, expected \(96, 112"):
        transforms.test_example(picture(), rec, tables, d, (96, 112), out)
