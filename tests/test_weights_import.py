"""Weights in: the torch-free `.pth` reader on real files, DETR-R50 (§4.3) and HOICLIP imports.

The `.pth` fixtures were written once with real torch by tools/goldens/make_pth_fixtures.py. The
full-size imports run on synthetic state dicts with the exact key names and shapes of the real
checkpoints (tests/fixtures/*_state_dict.json, copied from shared/data; facts only).
"""
import json
import math
import os
import pickle
import types
import zipfile

import flax.linen
import flax.traverse_util as traverse_util
import jax
import numpy as np
import pytest

from configs import hico
from data_pipeline import class_tables
from hoiclip_jax.models import hoiclip
from hoiclip_jax.models.attention import MultiheadAttention
from hoiclip_jax.tools import import_weights
from hoiclip_jax.weights.pretrained import load_pretrained
from hoiclip_jax.weights import detr_import, hoiclip_import, mapping, torch_pickle, torch_unpickler

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
PTH = os.path.join(FIXTURES, "pth")


def read_json(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# The .pth reader on files written by torch 2.13 (zip and legacy formats).

@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(PTH, "expected.npz")) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(os.path.join(PTH, "meta.json")) as f:
        return arrays, json.load(f)


@pytest.mark.parametrize("name", ["wrapped_zip.pth", "wrapped_legacy.pth", "bare_zip.pth"])
def test_reads_state_dicts_written_by_torch(name, expected):
    arrays, meta = expected
    state, extras = torch_pickle.load_state_dict(os.path.join(PTH, name))
    assert list(state) == list(arrays)  # file order kept
    for key, want in arrays.items():
        got = state[key]
        assert got.dtype.name == meta["dtypes"][key], key
        assert got.shape == want.shape and got.flags.c_contiguous, key
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
    # Views sharing one storage: a transpose (strides (1, 4)) and a slice at offset 5.
    np.testing.assert_array_equal(state["layer.weight_t"], state["layer.weight"].T)
    np.testing.assert_array_equal(state["layer.weight_slice"], state["layer.weight"][1:, 1:3])
    np.testing.assert_array_equal(state["indices"], [[0, 2], [3, 5]])
    assert state["counter"].shape == () and state["counter"] == 7
    if name.startswith("wrapped"):
        assert extras["epoch"] == 3
        assert isinstance(extras["args"], torch_unpickler.PickledNamespace)
        assert vars(extras["args"]) == meta["args"]
        exp_avg = extras["optimizer"]["state"][0]["exp_avg"]
        assert isinstance(exp_avg, torch_pickle.TensorRef)  # not read until asked for
        np.testing.assert_array_equal(exp_avg.numpy(), np.ones((2, 2), np.float32))
    else:
        assert extras == {}


def test_load_pth_returns_the_whole_object(expected):
    arrays, _ = expected
    obj = torch_pickle.load_pth(os.path.join(PTH, "wrapped_legacy.pth"))
    assert set(obj) == {"model", "epoch", "args", "optimizer"}
    assert type(obj["model"]).__name__ == "OrderedDict"
    np.testing.assert_array_equal(obj["model"]["conv.weight"], arrays["conv.weight"])
    assert obj["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert obj["optimizer"]["state"][0]["step"] == np.float32(5.0)


class _RunsCode:
    """Pickles as a call of `func(*args)`, as a malicious checkpoint would."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _write_zip_pth(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))


def _write_legacy_pth(path, payload):
    with open(path, "wb") as f:
        for obj in (torch_pickle.LEGACY_MAGIC_NUMBER, torch_pickle.LEGACY_PROTOCOL_VERSION,
                    {"little_endian": True}, payload, []):
            pickle.dump(obj, f, protocol=2)


@pytest.mark.parametrize("writer", [_write_zip_pth, _write_legacy_pth])
def test_refuses_pickled_code(writer, tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    writer(path, {"model": _RunsCode(os.system, f"touch {marker}")})
    with pytest.raises(torch_pickle.UnsafePickleError) as info:
        torch_pickle.load_pth(path)
    assert path in str(info.value) and ".system'" in str(info.value)  # posix.system / os.system
    assert not marker.exists()
    writer(path, {"model": _RunsCode(eval, "1 + 1")})
    with pytest.raises(torch_pickle.UnsafePickleError, match="builtins.eval"):
        torch_pickle.load_state_dict(path)


def test_rejects_views_outside_their_storage_and_non_checkpoints(tmp_path):
    source = types.SimpleNamespace(path="x.pth", read=lambda key, dtype: np.zeros(4, dtype))
    storage = torch_unpickler._Storage(source, "0", np.dtype(np.float32), 4)
    np.testing.assert_array_equal(
            torch_pickle.TensorRef(storage, 1, (3,), (1,)).numpy(), np.zeros(3))
    with pytest.raises(torch_pickle.PthFormatError, match="reaches element 4 of 4"):
        torch_pickle.TensorRef(storage, 0, (3,), (2,)).numpy()
    with pytest.raises(torch_pickle.PthFormatError, match="negative"):
        torch_pickle.TensorRef(storage, 0, (2,), (-1,)).numpy()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(torch_pickle.PthFormatError, match="garbage.pth"):
        torch_pickle.load_pth(str(garbage))


def test_converted_layouts_compute_what_torch_computes():
    """nn.MultiheadAttention (packed in_proj, key padding mask), Conv2d and Linear from a real
    .pth, converted by the import rules, against their torch outputs (layouts_io.npz)."""
    state, _ = torch_pickle.load_state_dict(os.path.join(PTH, "layouts.pth"))
    with np.load(os.path.join(PTH, "layouts_io.npz")) as npz:
        io = {k: npz[k] for k in npz.files}
    attn = MultiheadAttention(num_heads=2)
    conv = flax.linen.Conv(4, (3, 2), padding="VALID")
    dense = flax.linen.Dense(6)
    init = lambda module, *x: jax.eval_shape(module.init, jax.random.PRNGKey(0), *x)["params"]
    target = {"attn": init(attn, io["mha_query"], io["mha_key"], io["mha_key"]),
              "conv": init(conv, io["conv_in"]), "dense": init(dense, io["linear_in"])}
    rules = [mapping.Rule("mha", "attn", "mha"), mapping.Rule("conv", "conv", "conv"),
             mapping.Rule("linear", "dense", "linear")]
    flat, report = mapping.convert(state, rules, [], mapping.flat_shapes(target))
    assert report.left_at_init == [] and report.unmatched == []
    params = traverse_util.unflatten_dict(flat, sep="/")
    out = attn.apply({"params": params["attn"]}, io["mha_query"], io["mha_key"], io["mha_key"],
                     key_mask=io["mha_key_mask"])
    np.testing.assert_allclose(out, io["mha_out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.apply({"params": params["conv"]}, io["conv_in"]),
                               io["conv_out"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense.apply({"params": params["dense"]}, io["linear_in"]),
                               io["linear_out"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Full-size imports on synthetic state dicts with the real checkpoints' keys and shapes.

def synthetic_state_dict(table: dict, seed: int) -> dict:
    """Key -> array of the table's shape (float16 where real checkpoints hold float16).

    Arrays are windows at distinct offsets into one random pool per dtype, so they cost no
    memory of their own and any two keys (or two rows of one key) hold different values.
    """
    rng = np.random.default_rng(seed)
    size = max(math.prod(e["shape"]) for e in table.values()) + 65537
    pools = {}
    state = {}
    for i, (key, entry) in enumerate(table.items()):
        dtype = np.dtype(entry.get("dtype_cuda_build", entry["dtype"]))
        if dtype not in pools:
            pools[dtype] = rng.standard_normal(size, np.float32).astype(dtype)
        offset = (i * 7919) % 65537
        n = math.prod(entry["shape"])
        state[key] = pools[dtype][offset:offset + n].reshape(entry["shape"])
    return state


def sizes(shapes: dict, paths) -> int:
    return sum(math.prod(shapes[p][0]) for p in paths)


@pytest.fixture(scope="module")
def hico_target():
    """(tables, our param shapes tree) of configs/hico.py; nothing is initialised."""
    config = hico.get_config()
    tables = class_tables.load_class_tables(config.dataset)
    model = hoiclip.build_model(config.model, tables)
    return tables, hoiclip.abstract_params(model, config.dataset)


@pytest.fixture(scope="module")
def hoiclip_import_result(hico_target):
    table = read_json("hoiclip_state_dict.json")
    state = synthetic_state_dict(table["keys"], seed=0)
    flat, report = hoiclip_import.import_hoiclip(state, hico_target[1])
    return table, state, flat, report


def test_hoiclip_import_fills_every_param(hoiclip_import_result, hico_target):
    table, state, flat, report = hoiclip_import_result
    shapes = mapping.flat_shapes(hico_target[1])
    # Reference facts: modules built but unused (§0), the fusion layers' never-called norm4
    # (§1.5), and verb2hoi_proj(_eval), a fixed 0/1 matrix that is a constant here (§1.6).
    never_called = [k for group in table["other_keys_without_gradient"]
                    for k in group.get("keys", []) if ".norm4." in k]
    expected_ignored = {k for k in table["keys"]
                        if k.startswith(tuple(table["unused_prefixes"]))
                        or k in never_called or k.startswith("verb2hoi_proj")}
    assert len(never_called) == 6 and len(expected_ignored) == 69
    assert report.left_at_init == [] and report.unmatched == []
    assert set(report.ignored) == expected_ignored
    assert set(flat) == set(shapes)
    for path, array in flat.items():
        assert (array.shape, array.dtype) == shapes[path], path
    loaded = [k for k in table["keys"] if k not in expected_ignored]
    assert sum(a.size for a in flat.values()) == sum(
            math.prod(table["keys"][k]["shape"]) for k in loaded)
    assert set(report.filled.values()) == set(loaded)


def test_hoiclip_import_puts_values_in_place(hoiclip_import_result):
    _, state, flat, _ = hoiclip_import_result
    f32 = lambda key: state[key].astype(np.float32)
    fusion = "transformer.clip_interaction_decoder.layers.2.multihead_attn."
    w, b = f32(fusion + "in_proj_weight"), f32(fusion + "in_proj_bias")
    kernel = flat["interaction/layer2/multihead_attn/k_proj/kernel"]
    assert kernel[3, 700] == w[768 + 700, 3] and kernel[767, 0] == w[768, 767]
    np.testing.assert_array_equal(flat["interaction/layer2/multihead_attn/v_proj/bias"],
                                  b[1536:])
    np.testing.assert_array_equal(flat["interaction/memory_proj/kernel"],
                                  f32("transformer.obj_class_fc.weight").T)
    np.testing.assert_array_equal(flat["interaction/q_inter/norm/scale"],
                                  f32("transformer.queries2spacial_proj_norm.weight"))
    np.testing.assert_array_equal(flat["obj_class_ln/bias"], f32("obj_class_fc.1.bias"))
    np.testing.assert_array_equal(flat["hoi_visual_projection/kernel"],
                                  f32("visual_projection.weight").T)
    np.testing.assert_array_equal(flat["verb_projection/kernel"], f32("verb_projection.weight").T)
    np.testing.assert_array_equal(flat["pos_guided_embed/embedding"],
                                  f32("pos_guided_embedd.weight"))
    assert flat["logit_scale"].shape == () and flat["logit_scale"] == f32("logit_scale")
    # CLIP: float16 in released checkpoints -> float32, OpenAI names -> Hugging Face Flax layout.
    clip = "clip_model.visual."
    conv = f32(clip + "conv1.weight")
    patch = flat["clip/vision_model/embeddings/patch_embedding/kernel"]
    assert patch.shape == (32, 32, 3, 768) and patch.dtype == np.float32
    assert patch[5, 17, 2, 300] == conv[300, 2, 5, 17]
    np.testing.assert_array_equal(flat["clip/visual_projection/kernel"], f32(clip + "proj"))
    np.testing.assert_array_equal(flat["clip/text_projection/kernel"],
                                  f32("clip_model.text_projection"))
    np.testing.assert_array_equal(flat["clip/vision_model/pre_layrnorm/scale"],
                                  f32(clip + "ln_pre.weight"))
    np.testing.assert_array_equal(flat["clip/text_model/encoder/layers/3/mlp/fc1/kernel"],
                                  f32("clip_model.transformer.resblocks.3.mlp.c_fc.weight").T)
    np.testing.assert_array_equal(flat["clip/text_model/embeddings/token_embedding/embedding"],
                                  f32("clip_model.token_embedding.weight"))


def test_split_in_proj_computes_the_same_projection(hoiclip_import_result):
    """PyTorch MHA projects with x @ in_proj_weight.T + in_proj_bias = [q | k | v]."""
    _, state, flat, _ = hoiclip_import_result
    prefix = "clip_model.visual.transformer.resblocks.11.attn."
    w = state[prefix + "in_proj_weight"].astype(np.float64)
    b = state[prefix + "in_proj_bias"].astype(np.float64)
    x = np.random.default_rng(1).standard_normal((5, 768))
    packed = x @ w.T + b
    ours = "clip/vision_model/encoder/layers/11/self_attn/"
    split = np.concatenate([x @ flat[f"{ours}{n}_proj/kernel"] + flat[f"{ours}{n}_proj/bias"]
                            for n in "qkv"], axis=1)
    np.testing.assert_allclose(split, packed, rtol=1e-6, atol=1e-6)


def test_shape_mismatch_names_the_key_and_both_shapes(hico_target):
    target = hico_target[1]
    # A V-COCO object classifier (82 rows) into the HICO model (81).
    state = {"obj_visual_projection.weight": np.zeros((82, 512), np.float32)}
    with pytest.raises(ValueError, match=r"obj_visual_projection\.weight has shape \(82, 512\)"
                                         r".*\(512, 82\).*obj_visual_projection/kernel has "
                                         r"shape \(512, 81\)"):
        hoiclip_import.import_hoiclip(state, target)
    state = {"transformer.encoder.layers.0.self_attn.in_proj_weight": np.zeros((768, 128))}
    with pytest.raises(ValueError, match=r"in_proj_weight has shape \(768, 128\)"):
        hoiclip_import.import_hoiclip(state, target)


@pytest.mark.parametrize("mix_name", ["vertial", "horizontal"])
def test_reproduction_q_inter_is_mapped_by_shape(mix_name):
    other = "horizontal" if mix_name == "vertial" else "vertial"
    rng = np.random.default_rng(0)
    state = {f"transformer.queries2special_{mix_name}_proj.weight": rng.normal(size=(2, 2)),
             f"transformer.queries2special_{mix_name}_proj.bias": rng.normal(size=2),
             f"transformer.queries2special_{other}_proj.weight": rng.normal(size=(6, 4)),
             f"transformer.queries2special_{other}_proj.bias": rng.normal(size=6),
             "transformer.queries2special_proj_norm.weight": rng.normal(size=6)}
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
    target = {"interaction": {"q_inter": {"mix": {"kernel": sds(2, 2), "bias": sds(2)},
                                          "proj": {"kernel": sds(4, 6), "bias": sds(6)},
                                          "norm": {"scale": sds(6)}}}}
    flat, report = hoiclip_import.import_hoiclip(state, target)
    assert report.left_at_init == [] and report.unmatched == []
    np.testing.assert_allclose(flat["interaction/q_inter/mix/kernel"],
                               state[f"transformer.queries2special_{mix_name}_proj.weight"].T)
    np.testing.assert_allclose(flat["interaction/q_inter/proj/bias"],
                               state[f"transformer.queries2special_{other}_proj.bias"])


# Reference modules that the DETR import does not fill (detr_r50_state_dict.json,
# result_for_hoiclip_hico.hoiclip_keys_not_filled_by_group) -> our param path prefixes.
NOT_FROM_DETR = {
    "logit_scale": ["logit_scale"],
    "obj_logit_scale": ["obj_logit_scale"],
    "transformer.clip_interaction_decoder": ["interaction/layer", "interaction/norm/"],
    "transformer.queries2spacial_proj": ["interaction/q_inter/proj/"],
    "transformer.queries2spacial_proj_norm": ["interaction/q_inter/norm/"],
    "transformer.obj_class_fc": ["interaction/memory_proj/"],
    "transformer.obj_class_ln": ["interaction/memory_norm/"],
    "query_embed_h": ["query_embed_h/"],
    "query_embed_o": ["query_embed_o/"],
    "pos_guided_embedd": ["pos_guided_embed/"],
    "inter2verb": ["inter2verb/"],
    "clip_model.positional_embedding": ["clip/text_model/embeddings/position_embedding/"],
    "clip_model.text_projection": ["clip/text_projection/"],
    "clip_model.logit_scale": ["clip/logit_scale"],
    "clip_model.visual": ["clip/vision_model/", "clip/visual_projection/"],
    "clip_model.transformer": ["clip/text_model/encoder/"],
    "clip_model.token_embedding": ["clip/text_model/embeddings/token_embedding/"],
    "clip_model.ln_final": ["clip/text_model/final_layer_norm/"],
    "verb_projection": ["verb_projection/"],
    "visual_projection": ["hoi_visual_projection/"],
    "obj_class_fc": ["obj_class_fc/", "obj_class_ln/"],
    "obj_visual_projection": ["obj_visual_projection/"],
    # No counterpart here: constants, and modules the reference builds but never uses (§0).
    "verb2hoi_proj": [], "verb2hoi_proj_eval": [], "transformer.inter_guided_embedd": [],
    "hoi_class_fc": [],
}


@pytest.fixture(scope="module")
def detr_import_result(hico_target):
    tables, target = hico_target
    table = read_json("detr_r50_state_dict.json")
    state = synthetic_state_dict(table["keys"], seed=1)
    flat, report = detr_import.import_detr(state, target, tables.coco_ids, num_queries=64)
    return table, state, flat, report


def test_detr_import_leaves_at_init_what_the_reference_leaves(detr_import_result, hico_target):
    table, _, flat, report = detr_import_result
    shapes = mapping.flat_shapes(hico_target[1])
    result = table["conversion_2branch"]["result_for_hoiclip_hico"]
    assert set(NOT_FROM_DETR) == set(result["hoiclip_keys_not_filled_by_group"])
    prefixes = tuple(p for group in NOT_FROM_DETR.values() for p in group)
    assert report.left_at_init == sorted(p for p in shapes if p.startswith(prefixes))
    assert report.unmatched == []
    # What is filled: the HOICLIP keys that the converted DETR fills, except the unused GEN-VLKT
    # interaction decoder (not built here).
    reference = read_json("hoiclip_state_dict.json")["keys"]
    from_detr = [k for k, e in reference.items() if "init_from_detr" in e
                 and not k.startswith("transformer.interaction_decoder.")]
    assert sizes(shapes, flat) == sum(math.prod(reference[k]["shape"]) for k in from_detr)
    assert {report.filled[p] for p in flat} == {reference[k]["init_from_detr"] for k in from_detr}


def _reference_group(key: str) -> str:
    """Groups as in result_for_hoiclip_hico: 'transformer.instance_decoder.layers.3.*'."""
    parts = key.split(".")
    if parts[0] != "transformer":
        return parts[0] + ".*"
    return ".".join(parts[:4] if parts[2] == "layers" else parts[:3]) + ".*"


def test_detr_import_ignores_what_the_reference_does_not_load(detr_import_result):
    table, _, _, report = detr_import_result
    expected = dict(table["conversion_2branch"]["result_for_hoiclip_hico"]
                    ["ignored_converted_keys"])
    # The reference fills its unused interaction decoder with DETR layers 0-2; it is not built
    # here, so those converted keys are ignored too.
    for key, entry in read_json("hoiclip_state_dict.json")["keys"].items():
        if key.startswith("transformer.interaction_decoder.") and "init_from_detr" in entry:
            group = _reference_group(key)
            expected[group] = expected.get(group, 0) + 1
    got = {}
    for key in report.ignored:
        got[_reference_group(key)] = got.get(_reference_group(key), 0) + 1
    assert got == expected


def test_detr_import_puts_values_in_place(detr_import_result):
    _, state, flat, _ = detr_import_result
    w = state["transformer.decoder.layers.1.multihead_attn.in_proj_weight"]
    v = flat["instance_decoder/layer1/multihead_attn/v_proj/kernel"]
    assert v[0, 0] == w[512, 0] and v[7, 200] == w[512 + 200, 7]
    bias = state["transformer.decoder.layers.2.self_attn.in_proj_bias"]
    np.testing.assert_array_equal(flat["instance_decoder/layer2/self_attn/q_proj/bias"],
                                  bias[:256])
    np.testing.assert_array_equal(flat["instance_decoder/norm/scale"],
                                  state["transformer.decoder.norm.weight"])
    np.testing.assert_array_equal(flat["encoder/layer5/linear1/kernel"],
                                  state["transformer.encoder.layers.5.linear1.weight"].T)
    conv = state["backbone.0.body.layer4.2.conv2.weight"]
    kernel = flat["backbone/layer4/block2/conv2/kernel"]
    assert kernel.shape == (3, 3, 512, 512) and kernel[0, 2, 10, 300] == conv[300, 10, 0, 2]
    bn = "backbone.0.body.layer2.0.downsample.1."
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                         ("var", "running_var")):
        np.testing.assert_array_equal(flat[f"backbone/layer2/block0/downsample_bn/{ours}"],
                                      state[bn + theirs])
    np.testing.assert_array_equal(flat["backbone/stem/bn/var"],
                                  state["backbone.0.body.bn1.running_var"])
    assert flat["input_proj/kernel"][0, 0, 2000, 3] == state["input_proj.weight"][3, 2000, 0, 0]
    for branch in ("hum", "obj"):
        np.testing.assert_array_equal(flat[f"{branch}_bbox_embed/layer2/kernel"],
                                      state["bbox_embed.layers.2.weight"].T)


def test_convert_2branch_object_rows_and_queries():
    rng = np.random.default_rng(0)
    detr = {"class_embed.weight": rng.normal(size=(92, 8)), "class_embed.bias": rng.normal(size=92),
            "query_embed.weight": rng.normal(size=(100, 8)),
            "transformer.decoder.norm.weight": rng.normal(size=8)}
    coco_ids = class_tables.load_class_tables(hico.get_config().dataset).coco_ids
    out = detr_import.convert_2branch(detr, coco_ids, num_queries=64)
    assert "transformer.decoder.norm.weight" not in out
    for branch in ("instance_decoder", "interaction_decoder"):
        assert out[f"transformer.{branch}.norm.weight"] is detr["transformer.decoder.norm.weight"]
    rows = out["obj_class_embed.weight"]
    assert rows.shape == (81, 8) and out["obj_class_embed.bias"].shape == (81,)
    np.testing.assert_array_equal(rows[0], detr["class_embed.weight"][1])    # person = COCO 1
    np.testing.assert_array_equal(rows[79], detr["class_embed.weight"][90])  # toothbrush = 90
    np.testing.assert_array_equal(rows[80], detr["class_embed.weight"][91])  # no-object
    np.testing.assert_array_equal(out["query_embed.weight"], detr["query_embed.weight"][:64])
    # V-COCO: one fresh nn.Linear(8, 1)-like row before no-object (82 rows).
    vcoco = detr_import.convert_2branch(detr, coco_ids, 64, extra_object_rows=1)
    rows = vcoco["obj_class_embed.weight"]
    assert rows.shape == (82, 8) and vcoco["obj_class_embed.bias"].shape == (82,)
    np.testing.assert_array_equal(rows[81], detr["class_embed.weight"][91])
    assert np.abs(rows[80]).max() <= 8 ** -0.5 and not np.allclose(rows[80], rows[81])
    assert abs(vcoco["obj_class_embed.bias"][80]) <= 8 ** -0.5


# ---------------------------------------------------------------------------------------------
# End to end on tiny real checkpoints (a legacy-format DETR, a zip-format HOICLIP with fp16 CLIP).

def zeros_tree(spec: dict):
    """Nested dict of zero arrays from {path: shape}."""
    return traverse_util.unflatten_dict(
            {k: np.zeros(s, np.float32) for k, s in spec.items()}, sep="/")


@pytest.fixture(scope="module")
def tiny_expected():
    with np.load(os.path.join(PTH, "tiny_expected.npz")) as npz:
        return {k: npz[k] for k in npz.files}


def test_load_detr_from_a_legacy_pth(tiny_expected):
    e = tiny_expected
    attn = {f"encoder/layer0/self_attn/{n}_proj/{leaf}": (4, 4) if leaf == "kernel" else (4,)
            for n in ("q", "k", "v", "out") for leaf in ("kernel", "bias")}
    params = zeros_tree({
            "backbone/stem/conv/kernel": (7, 7, 3, 8),
            **{f"backbone/layer1/block0/downsample_bn/{n}": (8,)
               for n in ("scale", "bias", "mean", "var")},
            "input_proj/kernel": (1, 1, 6, 4), "input_proj/bias": (4,), **attn,
            "instance_decoder/layer0/norm1/scale": (4,), "instance_decoder/norm/scale": (4,),
            "hum_bbox_embed/layer0/kernel": (4, 4), "obj_bbox_embed/layer0/bias": (4,),
            "query_embed_h/embedding": (3, 4)})
    config = types.SimpleNamespace(model=types.SimpleNamespace(num_queries=3))
    tables = types.SimpleNamespace(coco_ids=(1, 3), num_objects=2)
    path = os.path.join(PTH, "detr_tiny_legacy.pth")
    loaded, report = load_pretrained(path, params, config, tables)
    direct, _ = detr_import.load_detr(path, params, config.model, tables)
    jax.tree.map(np.testing.assert_array_equal, direct, loaded)
    assert report.left_at_init == ["query_embed_h/embedding"] and report.unmatched == []
    assert report.ignored["transformer.instance_decoder.layers.1.norm1.weight"].startswith(
            "no param instance_decoder/layer1")
    flat = traverse_util.flatten_dict(loaded, sep="/")
    np.testing.assert_array_equal(flat["backbone/stem/conv/kernel"],
                                  e["backbone.0.body.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["backbone/layer1/block0/downsample_bn/var"],
                                  e["backbone.0.body.layer1.0.downsample.1.running_var"])
    w = e["transformer.encoder.layers.0.self_attn.in_proj_weight"]
    np.testing.assert_array_equal(flat["encoder/layer0/self_attn/k_proj/kernel"], w[4:8].T)
    np.testing.assert_array_equal(flat["hum_bbox_embed/layer0/kernel"],
                                  e["bbox_embed.layers.0.weight"].T)
    np.testing.assert_array_equal(flat["obj_bbox_embed/layer0/bias"], e["bbox_embed.layers.0.bias"])
    np.testing.assert_array_equal(flat["input_proj/kernel"][0, 0],
                                  e["input_proj.weight"][:, :, 0, 0].T)
    assert not flat["query_embed_h/embedding"].any()  # left as it was


def test_load_hoiclip_from_a_zip_pth_and_roundtrip_msgpack(tiny_expected, tmp_path):
    e = tiny_expected
    params = zeros_tree({
            "logit_scale": (),
            **{f"interaction/layer0/self_attn/{n}_proj/{leaf}": (6, 6) if leaf == "kernel" else (6,)
               for n in ("q", "k", "v", "out") for leaf in ("kernel", "bias")},
            "hoi_visual_projection/kernel": (3, 5), "hoi_visual_projection/bias": (5,),
            "clip/visual_projection/kernel": (6, 3),
            "clip/vision_model/embeddings/patch_embedding/kernel": (2, 2, 3, 6)})
    config = types.SimpleNamespace(model=types.SimpleNamespace(num_queries=3))
    path = os.path.join(PTH, "hoiclip_tiny_zip.pth")
    loaded, report = load_pretrained(path, params, config, tables=None)
    assert report.left_at_init == ["interaction/layer0/self_attn/out_proj/bias",
                                   "interaction/layer0/self_attn/out_proj/kernel"]
    assert sorted(report.ignored) == ["hoi_class_fc.0.weight",
                                      "transformer.clip_interaction_decoder.layers.0.norm4.weight",
                                      "verb2hoi_proj"]
    flat = traverse_util.flatten_dict(loaded, sep="/")
    assert flat["logit_scale"] == np.float32(2.5)
    np.testing.assert_array_equal(flat["interaction/layer0/self_attn/v_proj/bias"],
                                  e["transformer.clip_interaction_decoder.layers.0.self_attn."
                                    "in_proj_bias"][12:])
    proj = flat["clip/visual_projection/kernel"]
    assert proj.dtype == np.float32  # float16 in the file
    np.testing.assert_array_equal(proj, e["clip_model.visual.proj"].astype(np.float32))
    # The CLI's msgpack holds the imported params only; loading it gives the same tree.
    state, _ = torch_pickle.load_state_dict(path)
    imported, _ = hoiclip_import.import_hoiclip(state, params)
    msgpack = import_weights.write(str(tmp_path), imported, report)
    again, again_report = load_pretrained(msgpack, params, config, tables=None)
    assert again_report.left_at_init == report.left_at_init
    jax.tree.map(np.testing.assert_array_equal, again, loaded)
