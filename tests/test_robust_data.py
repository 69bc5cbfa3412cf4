"""Robustness of the data pipeline (README "What happens when…", cases 1-5): truncated annotation files,
bad records, unreadable and non-RGB images, degenerate boxes, and more GT pairs than queries.

The cases already tested elsewhere are only listed in README "What happens when…"; these tests add the
ones that were missing. The images are a tiny synthetic set (data_pipeline/synthetic/generate.py).
"""
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import demo
from hoiclip_jax.lib import config_base as common
from data_pipeline import class_tables, hico_reader, loader, sources
from data_pipeline.synthetic import generate as synthetic
from hoiclip_jax.train import losses, matching
from tests import helpers

BATCH = 4


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """(dataset config, tables, train records, test records) of a 12 + 4 image synthetic set."""
    out = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(out, seed=3, num_train=12, num_test=4)
    config = demo.get_config().dataset
    config.root = out
    config.class_table = os.path.join(out, "annotations", "classes.json")
    config.canvas, config.max_side = (128, 128), 128
    config.train_short_sides, config.test_short_side = (112, 120, 128), 128
    config.num_threads = 1
    tables = class_tables.load_class_tables(config)
    read = lambda name: hico_reader.read_annotations(os.path.join(out, "annotations", name),
                                                     tables)
    return config, tables, read("trainval_hico.json"), read("test_hico.json")


def _copy_images(config, split_dir: str, tmp_path) -> str:
    """A copy of a split's image folder that a test may corrupt."""
    return shutil.copytree(os.path.join(config.root, "images", split_dir),
                           str(tmp_path / split_dir))


def _truncate(path: str, fraction: float = 0.5) -> None:
    """Cuts a JPEG: its header still reads (size known), decoding its pixels fails."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * fraction)])


def _batches(records, tables, config, images, process_index=0, process_count=1):
    return list(loader.train_batches(records, tables, config, images, global_batch_size=BATCH,
                                     seed=7, epoch=0, process_index=process_index,
                                     process_count=process_count))


# ----------------------------------------------------------------------------- case 1

def test_truncated_annotation_file_names_file_and_position(synth, tmp_path):
    config, tables, _, _ = synth
    text = open(os.path.join(config.root, "annotations", "trainval_hico.json")).read()
    cut = tmp_path / "cut.json"
    cut.write_text(text[:len(text) // 2])
    lines = text[:len(text) // 2].split("\n")
    with pytest.raises(hico_reader.AnnotationError,
                       match=rf"cut.json: invalid JSON at line {len(lines)} column \d+"):
        hico_reader.read_annotations(str(cut), tables)
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(hico_reader.AnnotationError, match="empty.json: invalid JSON at line 1"):
        hico_reader.read_annotations(str(empty), tables)
    # Cut inside a two-byte UTF-8 character: named by its byte offset.
    data = json.dumps([{"file_name": "caf\u00e9.jpg"}], ensure_ascii=False).encode()
    offset = data.index("\u00e9".encode()) + 1
    binary = tmp_path / "binary.json"
    binary.write_bytes(data[:offset])
    with pytest.raises(hico_reader.AnnotationError,
                       match=rf"binary.json: not UTF-8 text at byte {offset - 1}"):
        hico_reader.read_annotations(str(binary), tables)


# ----------------------------------------------------------------------------- case 2

def test_object_id_out_of_range_names_image_and_field(synth, tmp_path):
    config, tables, _, _ = synth
    with open(os.path.join(config.root, "annotations", "trainval_hico.json")) as f:
        raw = json.load(f)
    i = next(i for i, e in enumerate(raw) if e["hoi_annotation"])
    raw[i]["hoi_annotation"][0]["object_id"] = len(raw[i]["annotations"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(hico_reader.AnnotationError,
                       match=rf"bad.json: image #{i} \({raw[i]['file_name']}\): "
                             rf"hoi_annotation\[0\].object_id is {len(raw[i]['annotations'])}"):
        hico_reader.read_annotations(str(path), tables)


# ----------------------------------------------------------------------------- case 3

def test_grayscale_and_cmyk_images_are_converted_to_rgb(synth, tmp_path):
    config, tables, train, _ = synth
    image_dir = _copy_images(config, "train2015", tmp_path)
    with_hois = loader.training_records(train)
    for record, mode in zip(with_hois[:2], ("L", "CMYK")):
        path = os.path.join(image_dir, record.file_name)
        Image.open(path).convert(mode).save(path, "JPEG")
        assert Image.open(path).mode == mode
    images = loader.FolderImages(image_dir)
    gray = np.asarray(images(with_hois[0]))
    assert gray.shape[2] == 3 and (gray[..., 0] == gray[..., 2]).all()
    assert images(with_hois[1]).mode == "RGB"
    batches = _batches(with_hois[:BATCH], tables, config, image_dir)
    assert sorted(batches[0]["image_id"].tolist()) == sorted(r.image_id for r in with_hois[:4])


def test_corrupt_jpeg_in_training_is_skipped_counted_and_substituted(synth, tmp_path, caplog):
    config, tables, train, _ = synth
    clean_dir = os.path.join(config.root, "images", "train2015")
    clean = _batches(train, tables, config, clean_dir)
    assert len(clean) >= 2
    by_id = {r.image_id: r for r in train}
    # Corrupt the last row of batch 0 (its copy wraps around to row 0) and row 1 of batch 1.
    bad = {(0, BATCH - 1): (0, 0), (1, 1): (1, 2)}
    image_dir = _copy_images(config, "train2015", tmp_path)
    for (b, row) in bad:
        _truncate(os.path.join(image_dir, by_id[int(clean[b]["image_id"][row])].file_name))
    before = loader.unreadable_counts()
    with caplog.at_level(logging.WARNING):
        got = _batches(train, tables, config, image_dir)
    assert len(got) == len(clean)
    for b, (batch, expected) in enumerate(zip(got, clean)):
        for row in range(BATCH):
            src_b, src_row = bad.get((b, row), (b, row))  # the row whose example it holds
            for key in batch:
                np.testing.assert_array_equal(batch[key][row], clean[src_b][key][src_row],
                                              err_msg=f"batch {b} row {row} {key}")
    after = loader.unreadable_counts()
    for (b, row) in bad:
        name = by_id[int(clean[b]["image_id"][row])].file_name
        assert after.get(name, 0) == before.get(name, 0) + 1
        assert any(name in m and "skipped unreadable image" in m for m in caplog.messages)
    # Every process makes the same substitution: two shards form the single-process batch.
    shards = [_batches(train, tables, config, image_dir, p, 2) for p in range(2)]
    for j, batch in enumerate(got):
        for key in batch:
            np.testing.assert_array_equal(
                np.concatenate([shards[0][j][key], shards[1][j][key]]), batch[key])


def test_corrupt_jpeg_with_buckets_keeps_one_canvas_across_processes(synth, tmp_path):
    config, tables, train, _ = synth
    config = config.copy_and_resolve_references()
    config.augmentation = "reference"
    config.train_short_sides, config.crop_resize_sides, config.crop_size = (64, 96), (60, 80), \
        (48, 60)
    config.buckets = ((80, 112), (112, 80), (112, 112))
    image_dir = _copy_images(config, "train2015", tmp_path)
    clean = _batches(train, tables, config, image_dir)
    first = {r.image_id: r for r in train}[int(clean[0]["image_id"][0])]
    with open(os.path.join(image_dir, first.file_name), "wb") as f:
        f.write(b"not an image at all")  # not even a header: left out of the canvas choice
    shards = [_batches(train, tables, config, image_dir, p, 2) for p in range(2)]
    whole = _batches(train, tables, config, image_dir)
    assert whole[0]["image_id"][0] == whole[0]["image_id"][1]  # row 0 holds row 1's example
    for j, batch in enumerate(whole):
        assert shards[0][j]["image"].shape == shards[1][j]["image"].shape
        np.testing.assert_array_equal(
            np.concatenate([shards[0][j]["image"], shards[1][j]["image"]]), batch["image"])


def test_unreadable_image_in_evaluation_names_the_file(synth, tmp_path):
    config, tables, _, test = synth
    image_dir = _copy_images(config, "test2015", tmp_path)
    _truncate(os.path.join(image_dir, test[2].file_name))
    with pytest.raises(loader.UnreadableImageError,
                       match=rf"record 2 cannot be decoded: .*{test[2].file_name}"):
        list(loader.eval_batches(test, tables, config, image_dir, global_batch_size=BATCH))


# ----------------------------------------------------------------------------- case 4

def test_degenerate_boxes_are_dropped_in_training_counted_and_kept_in_test(synth, tmp_path,
                                                                           caplog):
    config, tables, _, _ = synth
    root = str(tmp_path / "data")
    shutil.copytree(config.root, root)
    ann = os.path.join(root, "annotations")
    for split, file_name, folder in (("train", "trainval_hico.json", "train2015"),
                                     ("test", "test_hico.json", "test2015")):
        with open(os.path.join(ann, file_name)) as f:
            raw = json.load(f)
        entry = next(e for e in raw if e["hoi_annotation"])
        w, h = Image.open(os.path.join(root, "images", folder, entry["file_name"])).size
        # Boxes of the first HOI's object class, so that a copy of that HOI may point at one.
        thing = entry["annotations"][entry["hoi_annotation"][0]["object_id"]]["category_id"]
        n = len(entry["annotations"])
        entry["annotations"] += [{"bbox": box, "category_id": thing} for box in (
            [10, 10, 10, 30],                  # zero area: dropped
            [40, 30, 20, 50],                  # inverted: dropped
            [w + 5, 5, w + 20, 20],            # outside the image: dropped
            [w - 10, h - 10, w + 30, h + 40])]  # partly outside: clamped to the image
        hoi = dict(entry["hoi_annotation"][0], object_id=n + 1)  # on the inverted box
        entry["hoi_annotation"].append(hoi)
        with open(os.path.join(ann, file_name), "w") as f:
            json.dump(raw, f)
        if split == "train":
            train_edit, train_n, train_w, train_h = raw.index(entry), n, w, h
            train_hois = len(entry["hoi_annotation"])
    d = config.copy_and_resolve_references()
    d.root = root
    with caplog.at_level(logging.INFO):
        train = sources.load_split(d, tables, "train")
        test = sources.load_split(d, tables, "test")
    assert (train.boxes_removed, train.hois_removed) == (3, 1)
    assert any("3 degenerate boxes and 1 HOIs on them removed" in m for m in caplog.messages)
    # The edited training record keeps its n boxes plus the clamped one, and its HOIs but the
    # one on the inverted box.
    record = train.records[train_edit]
    assert len(record.boxes) == train_n + 1 and record.boxes.dtype == np.float32
    np.testing.assert_array_equal(record.boxes[-1], [train_w - 10, train_h - 10, train_w,
                                                     train_h])
    assert len(record.hois) == train_hois - 1
    # The test split keeps the file's boxes (the evaluation's ground truth) and says so.
    assert (test.boxes_removed, test.hois_removed) == (0, 0)
    assert hico_reader.count_inverted(test.records) == 1
    assert any("1 inverted ground-truth boxes" in m for m in caplog.messages)


# ----------------------------------------------------------------------------- case 5

def test_more_gt_pairs_than_queries_match_and_train_finitely():
    config = helpers.tiny_config("")
    config.dataset.max_pairs = 6
    n, layers = 2, 2  # 2 queries, 6 real pairs in image 0
    batch = helpers.random_batch(config, num_hois=5, num_objects=3, batch_size=2)
    assert batch["pair_mask"][0].sum() == 6
    rng = np.random.default_rng(0)
    outputs = {"hoi_logits": rng.normal(size=(layers, 2, n, 5)).astype(np.float32),
               "obj_logits": rng.normal(size=(layers, 2, n, 4)).astype(np.float32),
               "sub_boxes": rng.uniform(0.2, 0.6, (layers, 2, n, 4)).astype(np.float32),
               "obj_boxes": rng.uniform(0.2, 0.6, (layers, 2, n, 4)).astype(np.float32)}
    cost = np.asarray(matching.hoi_cost(outputs, batch, common.matcher_config()))
    indices = matching.assign_host(cost.reshape(-1, n, 6),
                                   np.tile(batch["pair_mask"].sum(1), layers)).reshape(
                                       layers, 2, 6)
    assert ((indices[:, 0] >= 0).sum(-1) == n).all()  # every query used, 4 pairs unmatched
    terms = losses.set_losses(outputs, batch, indices, common.loss_config("hico"))
    assert all(np.isfinite(float(v)) for v in terms.values())
    assert np.isfinite(float(losses.total_loss(terms, common.loss_config("hico"))))
