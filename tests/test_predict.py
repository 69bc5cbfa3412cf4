"""Inference on users' images (`hoiclip_jax.predict`) and the analysis API (`load_checkpoint`,
`Predictor`): checkpoints saved from a 4-device mesh restore onto one device, the Predictor's
triplets are the evaluator's, the sown features are the tensors the logits are made of, a
HOICLIP `.pth` loads, and the pictures show the boxes."""
import collections
import json
import os
import pickle
import re
import subprocess
import sys
import types
import zipfile

import flax.traverse_util as traverse_util
import jax
import numpy as np
import pytest
from PIL import Image

import hoiclip_jax
from data_pipeline import class_tables, loader
from tests import fake_layout
from data_pipeline.hico_reader import HoiRecord
from hoiclip_jax import analysis
from hoiclip_jax.eval import inference, loading, scorers, visualize
from hoiclip_jax.eval import predict_cli as predict
from hoiclip_jax.lib import checkpoints, sharding
from hoiclip_jax.train import optim
from hoiclip_jax.eval.protocols import hico_topk
from hoiclip_jax.eval.protocols import vcoco as vcoco_metrics
from hoiclip_jax.models import hoiclip
from hoiclip_jax.lib.config_files import load_config
from hoiclip_jax.weights import detr_import, hoiclip_import
from tests import helpers, param_fill

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = 7
IMAGE_SIZES = [(50, 70), (64, 40), (80, 80)]  # (w, h); the test transform fits them in 64x64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A workdir with config.json and one checkpoint saved from the 4-device mesh, the params
    saved, and a few image files."""
    root = tmp_path_factory.mktemp("predict")
    config = helpers.tiny_config(helpers.write_tiny_table(str(root)))
    config.model.backbone.norm = "frozen_bn"  # the ResNet-50 of a released HOICLIP .pth
    config.eval.max_hois = 12
    config.eval.batch_size = 4
    tables = class_tables.load_class_tables(config.dataset)
    _, _, state = param_fill.filled_state(config, tables, seed=3)
    workdir = str(root / "workdir")
    checkpoints.write_config(workdir, config)
    mesh = sharding.make_mesh()
    assert mesh.size == 4
    ckpt = checkpoints.Checkpointer(workdir, keep=2)
    ckpt.save(STEP, sharding.put_replicated(state, mesh), {"epoch": 1})
    ckpt.close()
    rng = np.random.default_rng(0)
    image_dir = root / "images"
    image_dir.mkdir()
    images = []
    for i, (w, h) in enumerate(IMAGE_SIZES):
        path = str(image_dir / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path)
        images.append(path)
    params = jax.device_get(optim.merge_params(state["trainable"], state["frozen"]))
    return config, tables, workdir, params, images


def assert_same_tree(got, want):
    flat_got = traverse_util.flatten_dict(got, sep="/")
    flat_want = traverse_util.flatten_dict(want, sep="/")
    assert flat_got.keys() == flat_want.keys()
    for key, value in flat_want.items():
        np.testing.assert_array_equal(np.asarray(flat_got[key]), value, err_msg=key)


def test_import_stays_light_and_exports_load_checkpoint():
    code = ("import sys, hoiclip_jax; assert 'jax' not in sys.modules, 'jax imported'; "
            "f = hoiclip_jax.load_checkpoint; assert 'jax' in sys.modules; print(f.__module__)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hoiclip_jax.eval.loading"


def test_load_checkpoint_restores_onto_one_device(run):
    config, _, workdir, params, _ = run
    device = jax.devices()[1]  # not the default one: the argument is honoured
    loaded_config, loaded = hoiclip_jax.load_checkpoint(workdir, device=device)
    assert loaded_config.model.hidden_dim == config.model.hidden_dim
    assert_same_tree(loaded, params)
    for leaf in jax.tree.leaves(loaded):
        assert leaf.sharding == jax.sharding.SingleDeviceSharding(device)
    # The same step through the step folder; the checkpoint folders name their latest step.
    assert_same_tree(analysis.load_checkpoint(os.path.join(workdir, "checkpoints",
                                                           str(STEP)))[1], params)
    workdir = os.path.abspath(workdir)
    for subdir in ("checkpoints", "best"):
        assert analysis.locate_checkpoint(os.path.join(workdir, subdir), None) == (
            workdir, subdir, None)
    assert analysis.locate_checkpoint(workdir, 5) == (workdir, "checkpoints", 5)


def test_load_checkpoint_errors_name_the_problem(run, tmp_path):
    config, _, workdir, _, images = run
    with pytest.raises(FileNotFoundError, match="not a workdir"):
        analysis.load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="not a weight file"):
        analysis.load_checkpoint(images[0], config)
    with pytest.raises(ValueError, match="needs `config`"):
        pth = tmp_path / "weights.pth"
        pth.write_bytes(b"")
        analysis.load_checkpoint(str(pth))
    with pytest.raises(ValueError, match=f"is step {STEP}, but step=3"):
        analysis.load_checkpoint(os.path.join(workdir, "checkpoints", str(STEP)), step=3)
    # A config.json of an older version (a field missing) is refused, naming the field.
    old = tmp_path / "old"
    old.mkdir()
    saved = json.loads(open(os.path.join(workdir, checkpoints.CONFIG_FILE)).read())
    del saved["eval"]["nms_beta"]
    (old / checkpoints.CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.raises(loading.ConfigFieldsError, match=r"eval\.nms_beta"):
        analysis.load_checkpoint(str(old))


def evaluator_topk(config, tables, params, image_dir: str, names: list[str],
                   correct_mat=None) -> list[dict]:
    """Top-k of `inference.make_predict_fn` on the 4-device mesh, through the eval loader
    (V-COCO's top-k when `correct_mat` is given)."""
    mesh = sharding.make_mesh()
    model = hoiclip.build_model(config.model, tables)
    predict_fn = inference.make_predict_fn(model, tables, config.eval.max_hois, mesh,
                                            correct_mat=correct_mat)
    empty = lambda: (np.zeros((0, 4), np.float32), np.zeros(0, np.int32),
                     np.zeros((0, 4), np.int32))
    records = [HoiRecord(name, i, *empty()) for i, name in enumerate(names)]
    replicated = sharding.put_replicated(params, mesh)
    results = []
    for batch in loader.eval_batches(records, tables, config.dataset, image_dir,
                                     global_batch_size=config.eval.batch_size):
        mask = batch.pop("example_mask")
        out = jax.device_get(predict_fn(replicated, sharding.put_batch(batch, mesh)))
        results += [{k: v[i] for k, v in out.items()} for i in np.flatnonzero(mask)]
    return results


def test_predictor_equals_the_evaluator_with_buckets(run):
    """With `dataset.buckets`, the evaluator predicts each image at the smallest bucket that
    holds it alone (not the batch's), as `Predictor` does: the same top-k, whatever batch the
    image is in. The three images need three different canvases; one batch holds them all."""
    config, tables, _, params, images = run
    config = config.copy_and_resolve_references()
    config.dataset.buckets = ((64, 48), (48, 64))
    config.eval.batch_size = 4
    image_dir = os.path.dirname(images[0])
    records = [HoiRecord(os.path.basename(p), i, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int32), np.zeros((0, 4), np.int32))
               for i, p in enumerate(images)]
    folder = loader.FolderImages(image_dir)
    groups = inference.bucket_groups(records, folder, config.dataset)
    assert groups == [[0], [1], [2]]  # (64, 48), (48, 64), the 64x64 canvas
    mesh = sharding.make_mesh()
    model = hoiclip.build_model(config.model, tables)
    predict_fn = inference.make_predict_fn(model, tables, config.eval.max_hois, mesh)
    split = types.SimpleNamespace(records=records, images=folder)
    expected = inference.predict_dataset(predict_fn, sharding.put_replicated(params, mesh),
                                         split, tables, config, mesh)
    predictor = analysis.Predictor(config, params)
    for path, want in zip(images, expected):
        got = predictor(path)
        for key in ("hoi_ids", "query_ids"):
            np.testing.assert_array_equal(got.topk[key], want[key], err_msg=key)
        for key in ("scores", "sub_xyxy", "obj_xyxy"):
            np.testing.assert_allclose(got.topk[key], want[key], rtol=1e-5, atol=1e-4,
                                       err_msg=key)


def test_predictor_applies_the_configs_tfe(run):
    """`predict` and `Predictor` rank with TFE k = the first of `eval.tfe_k`, as the
    evaluator's TFE row; tfe_k=0 gives the plain row."""
    config, tables, _, params, images = run
    config = config.copy_and_resolve_references()
    config.eval.tfe_k = (3,)
    mesh = sharding.make_mesh()
    model = hoiclip.build_model(config.model, tables)
    predict_fn = inference.make_predict_fn(model, tables, config.eval.max_hois, mesh,
                                           tfe_k=(3,))
    records = [HoiRecord(os.path.basename(images[0]), 0, np.zeros((0, 4), np.float32),
                         np.zeros(0, np.int32), np.zeros((0, 4), np.int32))]
    split = types.SimpleNamespace(records=records,
                                  images=loader.FolderImages(os.path.dirname(images[0])))
    out = inference.predict_dataset(predict_fn, sharding.put_replicated(params, mesh), split,
                                    tables, config, mesh)
    for k, predictor in ((3, analysis.Predictor(config, params)),
                         (0, analysis.Predictor(config, params, tfe_k=0))):
        want, = inference.select_variant(out, k)
        got = predictor(images[0])
        np.testing.assert_array_equal(got.topk["hoi_ids"], want["hoi_ids"], err_msg=str(k))
        np.testing.assert_allclose(got.topk["scores"], want["scores"], rtol=1e-5, atol=1e-5)
    plain, = inference.select_variant(out, 0)
    enhanced, = inference.select_variant(out, 3)
    assert not np.allclose(plain["scores"], enhanced["scores"])  # TFE moved the scores


def test_predictor_gives_the_evaluators_triplets(run):
    config, tables, _, params, images = run
    predictor = analysis.Predictor(config, params)
    expected = evaluator_topk(config, tables, params, os.path.dirname(images[0]),
                              [os.path.basename(p) for p in images])
    e = config.eval
    evaluated = hico_topk.predictions_from_topk(
        {k: np.stack([p[k] for p in expected]) for k in expected[0]}, use_nms=e.use_nms,
        nms_threshold=e.nms_threshold, nms_alpha=e.nms_alpha, nms_beta=e.nms_beta)
    for path, want, want_eval, size in zip(images, expected, evaluated, IMAGE_SIZES):
        got = predictor(path)
        assert got.size == size
        for key in ("hoi_ids", "query_ids"):
            np.testing.assert_array_equal(got.topk[key], want[key], err_msg=key)
        for key in ("scores", "sub_xyxy", "obj_xyxy"):
            np.testing.assert_allclose(got.topk[key], want[key], rtol=1e-5, atol=1e-4,
                                       err_msg=key)
        np.testing.assert_array_equal(got.pred_hois[:, :3], want_eval["pred_hois"][:, :3])
        np.testing.assert_allclose(got.pred_hois[:, 3], want_eval["pred_hois"][:, 3], rtol=1e-5)
        # Triplets: the evaluator's rows, best first, with names and boxes.
        scores = [t.score for t in got.triplets]
        assert len(got.triplets) == len(want_eval["pred_hois"]) and scores == sorted(
            scores, reverse=True)
        best = got.triplets[0]
        row = want_eval["pred_hois"][np.argmax(want_eval["pred_hois"][:, 3])]
        assert best.hoi == int(row[2]) and best.query == int(row[0])
        assert (best.verb_id, best.object_id) == tuple(tables.hois[best.hoi])
        assert best.verb == tables.verbs[best.verb_id]
        np.testing.assert_allclose(best.sub_box, want["sub_xyxy"][best.query], atol=1e-4)
        assert re.fullmatch(rf"person {best.verb} {best.object} \d\.\d{{3}}  person \[.*\] "
                            rf"{best.object} \[.*\]", str(best))


def test_features_are_the_tensors_the_logits_are_made_of(run):
    config, tables, workdir, params, images = run
    predictor = analysis.Predictor(config, params)
    got = predictor(images[2])
    f, out = got.features, got.outputs
    m, c = config.model, config.model.clip
    layers, n, w, e = m.inter_dec_layers, m.num_queries, c.vision_width, c.embed_dim
    tokens = (c.image_size // c.patch_size) ** 2 + 1
    assert f["clip_tokens"].shape == (tokens, w)
    assert f["q_inter"].shape == (n, w)
    assert f["o_inter"].shape == (layers, n, e)
    assert f["verb_logits"].shape == (layers, n, tables.num_verbs)
    assert out["hoi_logits"].shape == (layers, n, tables.num_hois)
    # clip_visual = CLIP tokens @ visual projection.
    np.testing.assert_allclose(
        out["clip_visual"], f["clip_tokens"] @ params["clip"]["visual_projection"]["kernel"],
        rtol=1e-4, atol=1e-5)
    # hoi_logits = exp(s) * (norm(O_inter) @ W + b) + verb_weight * S_v @ verb2hoi (§1.6).
    o = f["o_inter"] / np.linalg.norm(f["o_inter"], axis=-1, keepdims=True)
    hoi = params["hoi_visual_projection"]
    verb2hoi = np.zeros((tables.num_verbs, tables.num_hois), np.float32)
    verb2hoi[np.asarray(tables.hoi_to_verb), np.arange(tables.num_hois)] = 1.0
    expected = (np.exp(params["logit_scale"]) * (o @ hoi["kernel"] + hoi["bias"])
                + m.verb_weight * f["verb_logits"] @ verb2hoi)
    np.testing.assert_allclose(out["hoi_logits"], expected, rtol=1e-4, atol=1e-4)
    # Q_inter is a LayerNorm output (scale 1, biases ~N(0, 0.02) in the filled params).
    assert np.abs(f["q_inter"].mean(-1)).max() < 0.1
    np.testing.assert_allclose(f["q_inter"].std(-1), 1, atol=0.1)
    # That the sows change no output is checked against the evaluator, whose apply does not
    # collect them (test_predictor_gives_the_evaluators_triplets).


def edge_share(picture: np.ndarray, box: np.ndarray, color, side: str) -> float:
    """Share of the pixels along one edge of `box` (xyxy, picture pixels) within 1 pixel of
    which `color` is drawn."""
    x0, y0, x1, y1 = np.rint(box).astype(int)
    hit = np.all(picture == np.asarray(color, np.uint8), axis=-1)
    if side == "left":
        cells = [hit[y, max(0, x0 - 1):x0 + 2].any() for y in range(y0 + 2, y1 - 1)]
    else:
        cells = [hit[max(0, y0 - 1):y0 + 2, x].any() for x in range(x0 + 2, x1 - 1)]
    return float(np.mean(cells)) if cells else 0.0


def test_draw_triplets_draws_boxes_links_and_one_label_block_per_pair():
    image = Image.new("RGB", (40, 30), (128, 128, 128))
    sub, obj = np.array([2.0, 3.0, 20.0, 28.0]), np.array([22.0, 5.0, 38.0, 20.0])
    triplets = [{"sub_box": sub, "obj_box": obj, "label": "hold ball", "score": 1.5},
                {"sub_box": sub, "obj_box": obj, "label": "kick ball", "score": 1.2},
                {"sub_box": [5.0, 5.0, 15.0, 15.0], "obj_box": [1.0, 1.0, 50.0, 40.0],
                 "label": "ride horse", "score": 0.7}]
    pairs = visualize.group_pairs(triplets)
    assert [p[2] for p in pairs] == [["1. hold ball 1.50", "2. kick ball 1.20"],
                                     ["3. ride horse 0.70"]]
    picture = np.asarray(visualize.draw_triplets(image, triplets, scale=4))
    assert picture.shape == (120, 160, 3)
    for box, color in ((sub, visualize.HUMAN_COLOR), (obj, visualize.OBJECT_COLOR)):
        for side in ("left", "top"):
            assert edge_share(picture, box * 4, color, side) > 0.8, (color, side)
    # The box leaving the image is clipped: its right edge runs along the picture's border.
    assert np.all(picture[:, -1] == visualize.OBJECT_COLOR, axis=-1)[10:100].mean() > 0.8
    # The link between the centres of the first pair.
    middle = ((sub[:2] + sub[2:]) / 2 + (obj[:2] + obj[2:]) / 2) / 2 * 4
    x, y = np.rint(middle).astype(int)
    assert np.all(picture[y - 1:y + 2, x - 1:x + 2] == visualize.LINK_COLOR, axis=-1).any()


def test_predict_prints_triplets_and_draws_their_boxes(run, tmp_path, capsys):
    config, _, workdir, _, images = run
    out_dir = str(tmp_path / "out")
    results = predict.run(workdir, None, images[:2], out_dir, top=3, draw=1)
    printed = capsys.readouterr().out
    for image_path, prediction, png in results:
        assert png == os.path.join(out_dir, os.path.basename(image_path)[:-4] + ".png")
        block = printed[printed.index(image_path):]
        lines = re.findall(r"^\s+\d+\. person (\S+) (\S+) (\d\.\d{3})  person \[(.*?)\] \S+ "
                           r"\[(.*?)\]$", block, re.M)[:3]
        assert [(t.verb, t.object, f"{t.score:.3f}") for t in prediction.triplets[:3]] == [
            line[:3] for line in lines]
        np.testing.assert_allclose(np.array(lines[0][3].split(", "), float),
                                   prediction.triplets[0].sub_box, atol=0.06)
        assert f"picture: {png}" in block
        with Image.open(png) as opened:
            picture = np.asarray(opened.convert("RGB"))
        w, h = prediction.size
        scale = visualize.display_scale((w, h))
        assert picture.shape == (h * scale, w * scale, 3)
        limits = np.array([w * scale - 1, h * scale - 1] * 2)
        best = prediction.triplets[0]
        for box, color in ((best.sub_box, visualize.HUMAN_COLOR),
                           (best.obj_box, visualize.OBJECT_COLOR)):
            box = np.clip(np.asarray(box) * scale, 0, limits)
            for side in ("left", "top"):
                assert edge_share(picture, box, color, side) > 0.6, (png, color, side)


def test_predict_command_line(run, tmp_path):
    _, _, workdir, _, images = run
    out_dir = str(tmp_path / "cli")
    # Images after --image as plain arguments, and a repeated --image.
    command = [sys.executable, "-m", "hoiclip_jax.predict", f"--workdir={workdir}",
               "--image", images[0], images[1], f"--image={images[2]}", "--top=2",
               f"--out={out_dir}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(re.findall(r"^\s+\d+\. person \S+ \S+ \d\.\d{3}  person \[", result.stdout,
                          re.M)) == 2 * len(images)
    assert sorted(os.listdir(out_dir)) == ["img0.png", "img1.png", "img2.png"]
    # A weight file needs --config: a usage error before anything is loaded.
    pth = str(tmp_path / "x.pth")
    open(pth, "wb").close()
    result = subprocess.run([sys.executable, "-m", "hoiclip_jax.predict", f"--checkpoint={pth}",
                             f"--image={images[0]}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0 and "give --config" in result.stderr


# ---------------------------------------------------------------------------------------------
# A HOICLIP `.pth` of the tiny model, written without torch: the key names of the released
# checkpoint (tests/fixtures/hoiclip_state_dict.json), the values of our params converted back
# to PyTorch layouts.

def _rebuild_tensor_v2(*args):
    raise AssertionError("only pickled, renamed to torch._utils._rebuild_tensor_v2")


class FloatStorage:
    """Pickled by reference, renamed to torch.FloatStorage."""


class _StorageRef:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.shape = key, array.shape

    def __reduce__(self):
        strides = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return _rebuild_tensor_v2, (_StorageRef(self.key, int(np.prod(self.shape))), 0,
                                    self.shape, strides, False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
        return None


def write_pth(path: str, state: dict) -> None:
    """A zip-format `{'model': state}` checkpoint as torch.save writes it (float32)."""
    import io
    buffer = io.BytesIO()
    tensors = collections.OrderedDict((k, _Tensor(str(i), v)) for i, (k, v) in
                                      enumerate(state.items()))
    _Pickler(buffer, protocol=2).dump({"model": tensors})
    data = buffer.getvalue()
    for name, torch_name in (("_rebuild_tensor_v2", b"torch._utils"), ("FloatStorage", b"torch")):
        ours = f"c{__name__}\n{name}\n".encode()
        assert data.count(ours) == 1, name
        data = data.replace(ours, b"c" + torch_name + b"\n" + name.encode() + b"\n")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for i, value in enumerate(state.values()):
            archive.writestr(f"archive/data/{i}", np.ascontiguousarray(value, "<f4").tobytes())


def torch_value(rule, key: str, flat: dict) -> np.ndarray:
    """The PyTorch tensor of checkpoint `key` that `rule` maps onto our `flat` params."""
    paths = [path for path, _ in rule.match(key)]
    values = [np.asarray(flat[p]) for p in paths]
    leaf = key.rsplit(".", 1)[-1]
    if len(values) == 3:  # a packed in_proj: q, k, v rows
        return np.concatenate([v.T if leaf == "in_proj_weight" else v for v in values])
    value = values[0]
    if rule.kind == "conv" and leaf == "weight":
        return value.transpose(3, 2, 0, 1)
    if rule.kind in ("linear", "mha") and leaf == "weight":
        return value.T
    return value


def hoiclip_state_dict(params) -> dict:
    """Our params under the released HOICLIP key names (those our model has)."""
    with open(os.path.join(REPO, "tests", "fixtures", "hoiclip_state_dict.json")) as f:
        keys = json.load(f)["keys"]
    flat = traverse_util.flatten_dict(params, sep="/")
    rules = detr_import.DETR_RULES + hoiclip_import.HOICLIP_RULES + hoiclip_import.clip_rules()
    state = {}
    for key in keys:
        rule = next((r for r in rules if r.match(key) is not None), None)
        if rule is not None and all(p in flat for p, _ in rule.match(key)):
            state[key] = torch_value(rule, key, flat)
    return state


def test_a_hoiclip_pth_loads_and_predicts_like_our_checkpoint(run, tmp_path, capsys):
    config, _, workdir, params, images = run
    pth = str(tmp_path / "hoiclip_tiny.pth")
    write_pth(pth, hoiclip_state_dict(params))
    loaded_config, loaded = analysis.load_checkpoint(pth, config)
    assert loaded_config is config
    assert_same_tree(loaded, params)  # every param came from the file (none left at init)
    out_dir = str(tmp_path / "pth_out")
    (_, from_pth, _), = predict.run(pth, config, images[:1], out_dir, top=2)
    (_, from_workdir, _), = predict.run(workdir, None, images[:1], str(tmp_path / "w"), top=2)
    np.testing.assert_array_equal(from_pth.pred_hois, from_workdir.pred_hois)
    assert os.path.isfile(os.path.join(out_dir, "img0.png"))
    assert capsys.readouterr().out.count("person ") >= 4


def test_a_partial_weight_file_is_loaded_over_the_initial_params(run, tmp_path, monkeypatch):
    config, _, _, params, _ = run
    state = hoiclip_state_dict(params)
    del state["logit_scale"]
    pth = str(tmp_path / "partial.pth")
    write_pth(pth, state)
    # Initialising the model (random init and text tower) takes 10-30 s on 2 cores; record the
    # config the fallback initialises from instead: its `pretrained` is the file, which
    # `state_io.initial_params` then loads over the initial params (tested in test_weights_import).
    seen = []
    monkeypatch.setattr(loading.state_io, "initial_params",
                        lambda cfg, tables: seen.append(cfg) or (None, params))
    _, loaded = analysis.load_checkpoint(pth, config)
    assert len(seen) == 1 and seen[0].model.pretrained == pth
    assert config.model.pretrained == ""  # the caller's config is not changed
    assert_same_tree(loaded, params)


def test_vcoco_predictor_ranks_verb_roles_as_the_vcoco_evaluator(tmp_path):
    """A V-COCO model: the Predictor's top-k is `vcoco_topk`'s with the data set's
    corre_vcoco.npy, its rows those of the V-COCO evaluator, and its triplets name verb-roles
    and the predicted objects."""
    root = fake_layout.write_vcoco(str(tmp_path / "v-coco"), num_train=8, num_test=3)
    config = helpers.set_fields(load_config(os.path.join(REPO, "configs", "vcoco.py")),
                                helpers.smoke_overrides(root, str(tmp_path / "tfds")))
    config.eval.max_hois = 10
    tables = class_tables.load_class_tables(config.dataset)
    _, _, state = param_fill.filled_state(config, tables, seed=5)
    params = jax.device_get(optim.merge_params(state["trainable"], state["frozen"]))
    correct_mat = scorers.vcoco_correct_mat(config, tables)
    image_dir = os.path.join(root, "images", "val2014")
    names = sorted(os.listdir(image_dir))[:3]
    expected = evaluator_topk(config, tables, params, image_dir, names, correct_mat)
    rows = vcoco_metrics.predictions_from_topk(
        {k: np.stack([p[k] for p in expected]) for k in expected[0]})
    predictor = analysis.Predictor(config, params)
    for name, want, want_rows in zip(names, expected, rows):
        got = predictor(os.path.join(image_dir, name))
        assert "hoi_ids" not in got.topk
        for key in ("verb_ids", "query_ids", "obj_labels"):
            np.testing.assert_array_equal(got.topk[key], want[key], err_msg=key)
        np.testing.assert_allclose(got.topk["scores"], want["scores"], rtol=1e-5)
        np.testing.assert_array_equal(got.pred_hois[:, :3], want_rows["pred_hois"][:, :3])
        best = got.triplets[0]
        q = int(want["query_ids"][0])
        assert (best.hoi, best.verb_id, best.query) == (-1, int(want["verb_ids"][0]), q)
        assert best.verb == tables.verbs[best.verb_id]
        assert best.object == tables.objects[int(want["obj_labels"][q])]
        np.testing.assert_allclose(best.obj_box, want["obj_xyxy"][q], atol=1e-4)
