"""Loader: contract shapes, determinism, disjoint process shards, padded evaluation, buckets,
resuming at a step, the demo's batches unchanged."""
import os

import numpy as np
import pytest

from configs import demo
from data_pipeline import class_tables, hico_reader, loader, transforms
from data_pipeline.synthetic import generate as synthetic
from tests import frozen_light_transforms as frozen

CONTRACT = {"image": ((128, 128, 3), np.float32), "pixel_mask": ((128, 128), bool),
            "clip_image": ((64, 64, 3), np.float32), "sub_boxes": ((8, 4), np.float32),
            "obj_boxes": ((8, 4), np.float32), "obj_labels": ((8,), np.int32),
            "obj_exists": ((8,), bool), "pair_mask": ((8,), bool), "image_id": ((), np.int32),
            "orig_size": ((2,), np.int32)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("synth"))
    synthetic.generate(out, seed=2, num_train=40, num_test=10)
    config = demo.get_config().dataset
    config.root = out
    # Fixed sizes (CONTRACT), independent of how the demo config is tuned.
    config.canvas, config.max_side = (128, 128), 128
    config.train_short_sides, config.test_short_side = (112, 120, 128), 128
    config.max_pairs, config.clip_image_size = 8, 64
    config.class_table = os.path.join(out, "annotations", "classes.json")
    tables = class_tables.load_class_tables(config)
    ann = os.path.join(out, "annotations")
    train = hico_reader.read_annotations(os.path.join(ann, "trainval_hico.json"), tables)
    test = hico_reader.read_annotations(os.path.join(ann, "test_hico.json"), tables)
    return config, tables, train, test, os.path.join(out, "images")


def train_list(data, batch=4, seed=0, epoch=0, process_index=0, process_count=1, config=None,
               images=None, start_step=0):
    default_config, tables, train, _, image_root = data
    return list(loader.train_batches(
        train, tables, config or default_config, images or os.path.join(image_root, "train2015"),
        global_batch_size=batch, seed=seed, epoch=epoch, process_index=process_index,
        process_count=process_count, start_step=start_step))


def bucketed(data):
    """The reference augmentation at the synthetic images' scale, with buckets."""
    config = data[0].copy_and_resolve_references()
    config.augmentation = "reference"
    config.train_short_sides, config.max_side, config.canvas = (64, 80, 96, 112), 128, (128, 128)
    config.crop_resize_sides, config.crop_size = (60, 70, 80), (48, 80)
    config.test_short_side = 96
    config.buckets = ((80, 112), (112, 80), (112, 112))
    return config


def eval_list(data, batch, process_index=0, process_count=1):
    config, tables, _, test, images = data
    return list(loader.eval_batches(
        test, tables, config, os.path.join(images, "test2015"), global_batch_size=batch,
        process_index=process_index, process_count=process_count))


def test_train_batches_follow_the_contract(data):
    _, tables, train, _, _ = data
    batches = train_list(data, batch=4)
    with_hois = loader.training_records(train)
    assert 0 < len(with_hois) < len(train)  # the tiny set has images without interactions
    assert len(batches) == loader.steps_per_epoch(len(with_hois), 4) == len(with_hois) // 4
    expected = dict(CONTRACT, hoi_labels=((8, tables.num_hois), np.float32))
    for b in batches:
        assert {k: (v.shape[1:], v.dtype) for k, v in b.items()} == expected
        assert all(v.shape[0] == 4 for v in b.values())
        assert b["pair_mask"].any(axis=1).all()  # every training image has a pair
    ids = np.concatenate([b["image_id"] for b in batches])
    assert len(set(ids.tolist())) == len(ids)
    assert set(ids.tolist()) <= {r.image_id for r in with_hois}


def test_train_order_is_deterministic_per_seed_and_epoch(data):
    a, b = train_list(data, seed=1, epoch=0), train_list(data, seed=1, epoch=0)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    ids = lambda bs: np.concatenate([x["image_id"] for x in bs]).tolist()
    assert ids(a) != ids(train_list(data, seed=1, epoch=1))
    assert ids(a) != ids(train_list(data, seed=2, epoch=0))


def test_two_process_shards_are_disjoint_and_form_the_global_batch(data):
    whole = train_list(data, batch=4, seed=3)
    shards = [train_list(data, batch=4, seed=3, process_index=p, process_count=2)
              for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole)
    for j, batch in enumerate(whole):
        p0, p1 = shards[0][j], shards[1][j]
        assert p0["image"].shape[0] == p1["image"].shape[0] == 2
        assert not set(p0["image_id"].tolist()) & set(p1["image_id"].tolist())
        for k in batch:  # the same examples, augmentation included, in process order
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), batch[k])


def test_eval_batches_pad_with_masked_copies(data):
    _, _, _, test, _ = data
    assert len(test) == 10
    shards = [eval_list(data, batch=4, process_index=p, process_count=2) for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == 3  # ceil(10 / 4) on every process
    rows = [np.concatenate([shards[0][j][k], shards[1][j][k]])
            for j in range(3) for k in ("image_id", "example_mask")]
    ids = np.concatenate(rows[0::2])
    mask = np.concatenate(rows[1::2])
    assert mask.dtype == bool and mask.tolist() == [True] * 10 + [False] * 2
    assert ids.tolist() == list(range(10)) + [9, 9]
    single = eval_list(data, batch=4)
    np.testing.assert_array_equal(single[2]["image"][:2], shards[0][2]["image"])
    last = single[2]
    np.testing.assert_array_equal(last["image"][1], last["image"][3])  # padding copies


def test_eval_batches_are_deterministic_and_unaugmented(data):
    a, b = eval_list(data, batch=5), eval_list(data, batch=5)
    assert len(a) == 2
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    assert (a[0]["pixel_mask"].sum(axis=(1, 2)) > 0).all()


def test_missing_image_names_the_file(data, tmp_path):
    config, tables, train, _, _ = data
    with pytest.raises(FileNotFoundError, match="HICO_train2015_000000"):
        next(iter(loader.train_batches(train, tables, config, str(tmp_path),
                                       global_batch_size=4, seed=0, epoch=0)))


def test_bad_batch_layouts_are_errors(data):
    with pytest.raises(ValueError, match="divide evenly"):
        train_list(data, batch=5, process_count=2)
    with pytest.raises(ValueError, match="do not fill one global batch"):
        loader.steps_per_epoch(3, 4)


def test_worker_processes_give_the_same_batches(data):
    config = bucketed(data)
    threads = train_list(data, batch=4, seed=4, config=config)
    workers = config.copy_and_resolve_references()
    workers.num_workers, workers.num_threads = 2, 1
    batches = train_list(data, batch=4, seed=4, config=workers)
    assert len(batches) == len(threads)
    for a, b in zip(threads, batches):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_demo_batches_are_the_frozen_light_examples(data):
    """The demo's batches: each row is the frozen (pre-'reference') example of its record with
    the generator of (seed, epoch, record index)."""
    config, tables, train, _, images = data
    assert config.augmentation == "light" and not config.buckets
    by_id = {r.image_id: r for r in train}
    for batch in train_list(data, batch=4, seed=5, epoch=2)[:3]:
        for row, image_id in enumerate(batch["image_id"].tolist()):
            record = by_id[image_id]
            image = loader.load_image(os.path.join(images, "train2015"), record)
            old = frozen.train_example(image, record, tables, config,
                                       np.random.default_rng([5, 2, image_id]))
            for k in set(old) - {"verb_labels"}:  # the frozen copy still makes them
                np.testing.assert_array_equal(batch[k][row], old[k], err_msg=k)


def test_bucketed_batches_take_the_smallest_bucket_on_every_process(data):
    config, (_, tables, train, test, images) = bucketed(data), data
    whole = train_list(data, batch=4, seed=6, config=config)
    shapes = {b["image"].shape[1:3] for b in whole}
    assert len(shapes) > 1 and shapes <= {(80, 112), (112, 80), (112, 112), (128, 128)}
    for batch in whole:
        assert batch["image"].shape[1:3] == smallest_bucket(batch, config)
    # Two processes: each sizes the other's images from their headers and pads to the same
    # bucket, so the shards are the rows of the single-process batches.
    shards = [train_list(data, batch=4, seed=6, process_index=p, process_count=2, config=config)
              for p in range(2)]
    # ... also when the images come from a callable without `size` (decoded for their size)
    source = loader.FolderImages(os.path.join(images, "train2015"))
    shards[1] = train_list(data, batch=4, seed=6, process_index=1, process_count=2,
                           config=config, images=lambda record: source(record))
    for j, batch in enumerate(whole):
        for k in batch:
            np.testing.assert_array_equal(np.concatenate([shards[0][j][k], shards[1][j][k]]),
                                          batch[k])
    evals = list(loader.eval_batches(test, tables, config, os.path.join(images, "test2015"),
                                     global_batch_size=5))
    assert all(b["image"].shape[1:3] == smallest_bucket(b, config) for b in evals)


def smallest_bucket(batch, config):
    """The bucket `batch_canvas` picks for the batch's resized sizes (read from its masks)."""
    h = batch["pixel_mask"].any(axis=2).sum(axis=1)  # [b] resized heights
    w = batch["pixel_mask"].any(axis=1).sum(axis=1)
    return transforms.batch_canvas(list(zip(w.tolist(), h.tolist())), config)


def test_start_step_resumes_the_epoch(data):
    config = bucketed(data)
    whole = train_list(data, batch=4, seed=7, epoch=1, config=config)
    tail = train_list(data, batch=4, seed=7, epoch=1, config=config, start_step=3)
    assert len(tail) == len(whole) - 3
    for a, b in zip(whole[3:], tail):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert train_list(data, batch=4, config=config, start_step=len(whole)) == []
    with pytest.raises(ValueError, match="start_step"):
        train_list(data, batch=4, config=config, start_step=len(whole) + 1)
