"""E_v tool (hoiclip_jax/weights/verb_features.py, hoiclip_jax/tools/verb_features.py), reference §5.

The tool's E_v is checked against a plain numpy computation written here from the recipe of §5.1
/ §5.2, using CLIP embeddings of the same crops computed in one direct (unsharded, unpadded) call.
The 4 simulated devices of conftest.py shard the tool's batches.
"""
import json
import os
import types

import jax
import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from data_pipeline.synthetic import generate as synthetic
from data_pipeline.class_tables import load_class_tables
from data_pipeline.hico_reader import HoiRecord
from data_pipeline.transforms import clip_view
from hoiclip_jax.lib import sharding
from hoiclip_jax.weights import verb_features as ev
from hoiclip_jax.models.clip import CLIP, ClipSpec
from hoiclip_jax.tools import verb_features as tool
from tests.helpers import tiny_config

ATOL = 2e-5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic data set, its tiny config, tables, split and random CLIP."""
    root = str(tmp_path_factory.mktemp("ev_data"))
    synthetic.generate(root, seed=4, num_train=6, num_test=1)
    config = tiny_config(os.path.join(root, "annotations", "classes.json"))
    config.dataset.root = root
    tables = load_class_tables(config.dataset)
    split = tool.training_split(config, tables, include_unseen=False)
    clip, params = tool.load_clip(config, tables, "")
    return types.SimpleNamespace(root=root, config=config, tables=tables, split=split,
                                 clip=clip, params=params)


def rounded(box):
    return tuple(int(round(v)) for v in box)


def union(a, b):
    return np.r_[np.minimum(a[:2], b[:2]), np.maximum(a[2:], b[2:])]


def instance_features(records, images, clip, params, no_object=-1):
    """Per record, (f_h, f_o or None, f_u, verb, hoi, object class) of each HOI instance.

    The embeddings (unnormalised) of every distinct rounded crop of every record come from one
    direct CLIP call; a no-object role uses the human crop as its union.
    """
    records = [r for r in records if len(r.hois)]
    crops = {}
    for i, record in enumerate(records):
        boxes = record.boxes.astype(np.float64)
        for s, o, _, _ in record.hois:
            extra = [] if o < 0 else [boxes[o], union(boxes[s], boxes[o])]
            for box in [boxes[s]] + extra:
                crops[(i, rounded(box))] = None
    keys = sorted(crops)
    size = clip.spec.image_size
    pixels = np.stack([clip_view(images(records[i]).crop(r), size) for i, r in keys])
    embeds, _ = jax.jit(clip.apply, static_argnames="method")(
        {"params": params}, pixels, method=CLIP.encode_image)
    emb = dict(zip(keys, np.asarray(embeds, np.float64)))
    out = []
    for i, record in enumerate(records):
        boxes, rows = record.boxes.astype(np.float64), []
        for s, o, v, k in record.hois:
            f_h = emb[(i, rounded(boxes[s]))]
            if o < 0:
                rows.append((f_h, None, f_h, v, k, no_object))
            else:
                rows.append((f_h, emb[(i, rounded(boxes[o]))],
                             emb[(i, rounded(union(boxes[s], boxes[o])))], v, k,
                             record.box_labels[o]))
        out.append(rows)
    return out


def unit(x):
    n = np.linalg.norm(x)
    return x / n if n > 0 else np.zeros_like(x)


def numpy_seed(instances, num_verbs, dim):
    """§5.2: per verb, normalise(sum of (2 f_u - f_o - f_h) / 2); no object: f_o = 0."""
    total = np.zeros((num_verbs, dim))
    for rows in instances:
        for f_h, f_o, f_u, v, _, _ in rows:
            total[v] += (2 * f_u - (0 if f_o is None else f_o) - f_h) / 2
    return np.stack([unit(t) for t in total])


def numpy_original(instances, tables, dim):
    """§5.1: mean over the verb's HOI classes of norm(sum f_u) - norm(object sum), normalised."""
    hoi_sum, obj_sum = {}, {}
    for rows in instances:
        if not rows:
            continue
        human_mean = np.mean([r[0] for r in rows], axis=0)
        obj_sum[0] = obj_sum.get(0, 0) + human_mean
        for f_h, f_o, f_u, v, k, obj in rows:
            hoi_sum[k] = hoi_sum.get(k, 0) + f_u
            if f_o is not None:
                obj_sum[obj] = obj_sum.get(obj, 0) + f_o
    out = np.zeros((tables.num_verbs, dim))
    for v in range(tables.num_verbs):
        terms = []
        for k, (verb, obj) in enumerate(tables.hois):
            if verb != v or k not in hoi_sum:
                continue
            object_term = 0 if obj == tables.no_object_index else unit(obj_sum[obj])
            terms.append(unit(hoi_sum[k]) - object_term)
        if terms:
            out[v] = unit(np.mean(terms, axis=0))
    return out


def encoder(data, batch_size):
    return ev.CropEncoder(data.clip, data.params, sharding.make_mesh(), batch_size)


@pytest.fixture(scope="module")
def expected(data):
    inst = instance_features(data.split.records, data.split.images, data.clip, data.params)
    dim = data.clip.spec.embed_dim
    return {"seed": numpy_seed(inst, data.tables.num_verbs, dim),
            "original": numpy_original(inst, data.tables, dim)}


@pytest.mark.parametrize("method", ev.METHODS)
def test_matches_numpy_on_four_devices(data, expected, method):
    assert jax.device_count() == 4
    enc = encoder(data, batch_size=6)  # rounded up to 8: several batches, the last one padded
    assert enc.batch_size == 8
    features, sums = ev.verb_features(data.split.records, data.split.images, data.tables, enc,
                                      method, threads=2, progress=False)
    assert features.dtype == np.float32
    assert features.shape == (data.tables.num_verbs, data.clip.spec.embed_dim)
    assert sums.instances == sum(len(r.hois) for r in data.split.records)
    np.testing.assert_allclose(features, expected[method], atol=ATOL)
    norms = np.linalg.norm(features, axis=1)
    np.testing.assert_allclose(norms[sums.verb_count > 0], 1.0, atol=1e-5)


def test_batch_padding_does_not_change_results(data):
    runs = [ev.verb_features(data.split.records, data.split.images, data.tables,
                             encoder(data, b), "seed", threads=1, progress=False)[0]
            for b in (4, 12, 512)]  # 1 row per device / 3 per device / one mostly-padded batch
    for other in runs[1:]:
        np.testing.assert_allclose(other, runs[0], atol=ATOL)


def test_encoder_pads_and_shards(data):
    enc = encoder(data, batch_size=8)
    size = enc.image_size
    pixels = np.random.default_rng(0).normal(size=(5, size, size, 3)).astype(np.float32)
    direct, _ = data.clip.apply({"params": data.params}, pixels, method=CLIP.encode_image)
    np.testing.assert_allclose(enc(pixels), np.asarray(direct), atol=ATOL)
    np.testing.assert_allclose(enc(pixels[:1]), np.asarray(direct)[:1], atol=ATOL)
    padded = np.zeros((8, size, size, 3), np.float32)
    out = enc._encode(enc._params, jax.device_put(padded, enc._rows),
                      jax.device_put(np.arange(8) < 3, enc._rows))
    assert len(out.sharding.device_set) == 4
    assert not np.asarray(out)[3:].any()  # masked rows are zero
    with pytest.raises(ValueError, match="9 crops for a batch of 8"):
        enc(np.zeros((9, size, size, 3), np.float32))


def test_embed_stream_keeps_order_across_batches():
    calls = []

    def encode(rows):
        calls.append(len(rows))
        return rows[:, :1] * 10

    counts = [3, 0, 5, 1, 2, 0]
    items = [(i, np.full((c, 2), i, np.float32)) for i, c in enumerate(counts)]
    out = list(ev.embed_stream(iter(items), encode, batch_size=4))
    assert [i for i, _ in out] == list(range(len(counts)))
    for i, emb in out:
        assert emb.shape == (counts[i], 1) and (emb == 10 * i).all()
    assert calls == [4, 4, 3]


def test_plan_crops_merges_boxes_and_skips_empty_crops():
    boxes = np.array([[0, 0, 10, 20], [5, 5, 30, 15], [2, 2, 2.3, 9]], np.float32)
    hois = np.array([[0, 1, 0, 0], [0, 1, 1, 1], [0, 2, 1, 2], [0, -1, 2, 3]], np.int32)
    record = HoiRecord("a.jpg", 0, boxes, np.array([0, 1, 2], np.int32), hois)
    plan = ev.plan_crops(record)
    assert plan.skipped == 1  # box 2 is 0.3 px wide: rounds to an empty crop
    np.testing.assert_array_equal(plan.verbs, [0, 1, 2])
    # human, object, and one union crop for the pair (0, 1), shared by its two verbs
    assert len(plan.rects) == 3
    np.testing.assert_array_equal(plan.rects[plan.union[0]], [0, 0, 30, 20])
    assert plan.union[0] == plan.union[1]
    np.testing.assert_array_equal(plan.obj_class, [1, 1, -1])
    # no-object role: the union is the human crop and there is no object crop
    assert plan.union[2] == plan.human[2] and plan.obj[2] == -1


def test_vcoco_no_object_roles():
    tables = load_class_tables(mlc.ConfigDict(dict(name="vcoco", class_table="")))
    hold, stand, look = (tables.verbs.index(n) for n in ("hold_obj", "stand", "look_obj"))
    cup, no_obj = tables.objects.index("cup"), tables.no_object_index
    boxes = np.array([[4, 6, 30, 60], [40, 8, 70, 62], [20, 30, 38, 44]], np.float32)
    hois = np.array([[0, 2, hold, tables.hoi_index(hold, cup)],
                     [0, -1, stand, tables.hoi_index(stand, no_obj)],
                     [1, -1, hold, tables.hoi_index(hold, no_obj)],
                     [0, 1, look, tables.hoi_index(look, 0)]], np.int32)
    record = HoiRecord("v.jpg", 0, boxes, np.array([0, 0, cup], np.int32), hois)
    pixels = np.random.default_rng(1).integers(0, 256, (64, 80, 3), np.uint8)
    images = lambda r: Image.fromarray(pixels)
    spec = ClipSpec(embed_dim=16, image_size=32, patch_size=16, vision_width=32,
                    vision_layers=1, vision_heads=2, vision_mlp_dim=32, context_length=8,
                    vocab_size=16, text_width=16, text_layers=1, text_heads=2, text_mlp_dim=16)
    clip = CLIP(spec, 0.0)
    init = jax.jit(clip.init, compiler_options={"xla_backend_optimization_level": 0})
    params = init(jax.random.PRNGKey(3), np.zeros((1, 32, 32, 3), np.float32),
                  np.zeros((1, 4), np.int32))["params"]
    enc = ev.CropEncoder(clip, params, sharding.make_mesh(), 4)
    inst = instance_features([record], images, clip, params, no_object=no_obj)
    f_human_a, f_human_b = inst[0][1][0], inst[0][2][0]
    features = {}
    for method in ev.METHODS:
        features[method], _ = ev.verb_features([record], images, tables, enc, method,
                                               threads=1, progress=False)
        want = (numpy_seed(inst, tables.num_verbs, 16) if method == "seed"
                else numpy_original(inst, tables, 16))
        np.testing.assert_allclose(features[method], want, atol=ATOL)
        # A verb seen only without object: the direction of the human crop.
        np.testing.assert_allclose(features[method][stand], unit(f_human_a), atol=ATOL)
        norms = np.linalg.norm(features[method], axis=1)
        assert np.count_nonzero(norms) == 3  # hold, stand, look; the other verbs: zero rows
    # hold_obj mixes a cup instance and a no-object instance of person B (seed: + f_h / 2).
    f_h, f_o, f_u = inst[0][0][:3]
    np.testing.assert_allclose(features["seed"][hold], unit(2 * f_u - f_o - f_h + f_human_b),
                               atol=ATOL)
    # original: hold = mean of (cup class: Ĥ - Ô_cup) and (no-object class: Ĥ alone).
    want = unit((unit(f_u) - unit(f_o)) + unit(f_human_b))
    np.testing.assert_allclose(features["original"][hold], want, atol=ATOL)


def test_zero_shot_split_excludes_unseen_unless_asked(data, tmp_path):
    table = json.load(open(data.config.dataset.class_table))
    counts = np.zeros(len(table["hois"]), int)
    for r in data.split.records:
        np.add.at(counts, r.hois[:, 3], 1)
    unseen = int(np.argmax(counts))
    table["zero_shot_unseen"] = {"rare_first": [unseen]}
    path = str(tmp_path / "classes.json")
    json.dump(table, open(path, "w"))
    config = data.config.copy_and_resolve_references()
    config.dataset.class_table = path
    config.dataset.zero_shot = "rare_first"
    tables = load_class_tables(config.dataset)
    held_out = tool.training_split(config, tables, include_unseen=False)
    leaky = tool.training_split(config, tables, include_unseen=True)
    has_unseen = lambda split: any((r.hois[:, 3] == unseen).any() for r in split.records)
    assert not has_unseen(held_out) and has_unseen(leaky)
    assert config.dataset.zero_shot == "rare_first"  # the caller's config is left alone


def test_cli_writes_the_file_the_model_loads(data, expected, tmp_path):
    config_file = tmp_path / "ev_config.py"
    config_file.write_text(
        "from tests.helpers import tiny_config\n\n\n"
        "def get_config():\n"
        f"    config = tiny_config({data.config.dataset.class_table!r})\n"
        f"    config.dataset.root = {data.root!r}\n"
        "    return config\n")
    out = str(tmp_path / "out" / "verb.npy")
    tool.main(["--config", str(config_file), "--method", "original", "--out", out,
               "--batch-size", "12"])
    written = np.load(out)
    assert written.dtype == np.float32
    np.testing.assert_allclose(written, expected["original"], atol=ATOL)
    # config.model.verb_features reads it unchanged
    model_config = data.config.model.copy_and_resolve_references()
    model_config.verb_features = out
    hoi_text = np.zeros((data.tables.num_hois, written.shape[1]), np.float32)
    loaded = ev.verb_embeddings(model_config, data.tables, hoi_text)
    np.testing.assert_array_equal(np.asarray(loaded), written)
    with pytest.raises(ValueError, match="name a .npy file"):
        tool.main(["--config", str(config_file), "--method", "seed", "--out",
                   str(tmp_path / "verb.pth")])
