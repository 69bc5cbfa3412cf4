"""Example construction: boxes follow the pixels, flips mirror, shapes are static, targets."""
import numpy as np
import pytest
from PIL import Image, ImageDraw

from configs import demo
from data_pipeline import class_tables, transforms
from data_pipeline.hico_reader import HoiRecord

RED = (230, 20, 20)


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
    d = demo.get_config().dataset
    d.canvas, d.max_side, d.train_short_sides = canvas, max_side, shorts
    d.test_short_side, d.flip_prob, d.color_jitter = test_short, flip, jitter
    d.max_pairs, d.clip_image_size = max_pairs, clip
    return d


def record(boxes, labels, hois, image_id=3):
    return HoiRecord("img.jpg", image_id, np.array(boxes, np.float32).reshape(-1, 4),
                     np.array(labels, np.int32), np.array(hois, np.int32).reshape(-1, 4))


def picture(w=100, h=80, red_box=(30, 20, 60, 50)):
    image = Image.new("RGB", (w, h), (200, 200, 200))
    x0, y0, x1, y1 = red_box
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], fill=RED)  # pixels [x0, x1)
    return image


def denormalize(example):
    return example["image"] * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN


def xyxy_pixels(cxcywh, w, h):
    cx, cy, bw, bh = cxcywh * np.array([w, h, w, h])
    return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


def resized_hw(example):
    mask = example["pixel_mask"]
    return int(mask[:, 0].sum()), int(mask[0].sum())


@pytest.mark.parametrize("seed", range(6))
def test_boxes_cover_the_drawn_pixels(tables, seed):
    rec = record([[30, 20, 60, 50], [65, 10, 95, 70]], [0, 1], [[0, 1, 0, 0]])
    ex = transforms.train_example(picture(), rec, tables, dataset(jitter=0.0),
                                  np.random.default_rng(seed))
    h, w = resized_hw(ex)
    red = denormalize(ex)
    red = (red[..., 0] > 0.7) & (red[..., 1] < 0.3) & ex["pixel_mask"]
    ys, xs = np.nonzero(red)
    drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    box = xyxy_pixels(ex["sub_boxes"][0], w, h)
    # The box follows the drawn rectangle to within the blur of one bilinear pixel.
    np.testing.assert_allclose(box, drawn, atol=1.5)


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
        expected = {"image": ((128, 128, 3), np.float32), "pixel_mask": ((128, 128), bool),
                    "clip_image": ((64, 64, 3), np.float32),
                    "sub_boxes": ((8, 4), np.float32), "obj_boxes": ((8, 4), np.float32),
                    "obj_labels": ((8,), np.int32), "obj_exists": ((8,), bool),
                    "hoi_labels": ((8, 4), np.float32), "verb_labels": ((8, 3), np.float32),
                    "pair_mask": ((8,), bool), "image_id": ((), np.int32),
                    "orig_size": ((2,), np.int32)}
        assert {k: (np.shape(v), np.asarray(v).dtype) for k, v in ex.items()} == expected
        hh, ww = resized_hw(ex)
        assert ex["pixel_mask"].sum() == hh * ww and ex["pixel_mask"][:hh, :ww].all()
        # The short side is one of the choices unless the long side hit max_side (to within
        # the rounding of the short side, as DETR's resize).
        assert max(hh, ww) <= 128 and (min(hh, ww) in (112, 120, 128) or max(hh, ww) >= 126)
        assert np.all(ex["image"][hh:] == 0) and np.all(ex["image"][:, ww:] == 0)
        assert ex["orig_size"].tolist() == [h, w] and ex["image_id"] == 3
    test_hw = resized_hw(transforms.test_example(image, rec, tables, d))
    assert test_hw[::-1] == transforms.resized_size(w, h, 128, 128)


def test_resized_size_caps_the_long_side():
    # Capped by the long side: short side round(128 * 80 / 100) = 102, long int(127.5).
    assert transforms.resized_size(100, 80, 120, 128) == (127, 102)
    assert transforms.resized_size(100, 80, 96, 128) == (120, 96)
    assert transforms.resized_size(80, 100, 100, 1333) == (100, 125)
    assert transforms.resized_size(640, 480, 800, 1333) == (1066, 800)
    assert transforms.resized_size(2000, 400, 800, 1333) == (1333, 267)


def test_canvas_too_small_is_an_error(tables):
    rec = record([[2, 2, 20, 30]], [0], [])
    with pytest.raises(ValueError, match="img.jpg.*does not fit dataset.canvas"):
        transforms.test_example(picture(), rec, tables, dataset(canvas=(64, 64)))


def test_pair_targets_multi_hot_and_clamped_boxes(tables):
    # Pair (0, 1) has two verbs; box 2 is clamped; box 3 lies outside the image and its HOI
    # is dropped with it.
    rec = record([[10, 10, 30, 60], [40, 20, 60, 40], [50, 50, 140, 90], [120, 5, 130, 9]],
                 [0, 1, 2, 2], [[0, 1, 0, 0], [0, 2, 2, 2], [0, 1, 1, 1], [0, 3, 1, 3]])
    ex = transforms.test_example(picture(), rec, tables, dataset(test_short=80, max_side=100))
    assert ex["pair_mask"].tolist() == [True, True] + [False] * 6
    assert ex["verb_labels"][0].tolist() == [1, 1, 0] and ex["hoi_labels"][0].tolist() == \
        [1, 1, 0, 0]
    assert ex["verb_labels"][1].tolist() == [0, 0, 1] and ex["obj_labels"][:2].tolist() == [1, 2]
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
    ex = transforms.test_example(picture(), rec, vcoco, dataset())
    assert ex["obj_exists"][:2].tolist() == [False, True]
    assert ex["obj_labels"][:2].tolist() == [vcoco.no_object_index, 1] == [2, 1]
    assert not ex["obj_boxes"][0].any() and ex["sub_boxes"][0].any()


def test_deterministic_given_the_generator(tables):
    rec = record([[30, 20, 60, 50]], [0], [])
    d = dataset(jitter=0.4)
    a, b, c = (transforms.train_example(picture(), rec, tables, d, np.random.default_rng(s))
               for s in (5, 5, 6))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["image"], c["image"])


def test_color_jitter_keeps_grey_and_changes_colour():
    image = Image.new("RGB", (20, 10), (120, 60, 30))
    sample = transforms.Sample(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                               np.zeros((0, 4), np.int32))
    out = transforms.color_jitter(sample, np.random.default_rng(0), 0.4).image
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
