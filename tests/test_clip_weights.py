"""Pretrained CLIP: both Hugging Face weight formats against transformers' goldens, the BPE
tokenizer, the position resize, the converter's checks, and the text-embedding cache.

The fixture folder tests/fixtures/clip_tiny is written by tools/goldens/make_clip_goldens.py
(transformers 4.57 + torch): a tiny random CLIPModel saved as model.safetensors, converted to
flax_model.msgpack by transformers' own FlaxCLIPModel, and its outputs in golden.npz.
"""
import dataclasses
import json
import os
import shutil

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from safetensors.numpy import load_file

from hoiclip_jax.lib import config_base as common
from data_pipeline import class_tables
from hoiclip_jax.weights import clip as clip_weights
from hoiclip_jax.models import hoiclip
from hoiclip_jax.models.clip import ClipSpec, abstract_params
from hoiclip_jax.weights import classifiers
from hoiclip_jax.weights import prompts as prompt_files
from hoiclip_jax.weights.clip import load_pretrained
from hoiclip_jax.weights.tokenizer import ClipBpeTokenizer, build_tokenizer
from hoiclip_jax.tools import text_embeddings as text_tool
from tests import helpers

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "clip_tiny")
TOLERANCE = 1e-4  # fp32, issue 3


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(FOLDER, "golden.npz")) as data:
        return dict(data)


@pytest.fixture(scope="module")
def spec():
    return clip_weights.read_spec(FOLDER)


def flat(tree):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def max_error(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def encode_image(model, params, pixels):
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))
    return fn(params, jnp.asarray(pixels))


def test_spec_from_config_json(spec, tmp_path):
    assert spec.embed_dim == 16 and spec.vision_width == 32 and spec.text_width == 24
    assert (spec.image_size, spec.patch_size, spec.num_image_tokens) == (32, 8, 17)
    assert (spec.context_length, spec.vocab_size, spec.text_heads) == (32, 814, 3)
    # Omitted keys take transformers' defaults; the legacy `*_config_dict` wins over `*_config`.
    (tmp_path / "config.json").write_text(json.dumps(
            {"text_config": {"hidden_size": 64}, "text_config_dict": {"hidden_size": 128},
             "vision_config": {}}))
    legacy = clip_weights.read_spec(str(tmp_path))
    assert (legacy.text_width, legacy.vision_width, legacy.embed_dim) == (128, 768, 512)
    # An empty config.json is transformers' default CLIP, ViT-B/32: the sizes of hoiclip_jax/lib/config_base.py.
    (tmp_path / "config.json").write_text("{}")
    default = common.model_config("hico").clip
    assert clip_weights.read_spec(str(tmp_path)) == ClipSpec(
            **{f.name: default[f.name] for f in dataclasses.fields(ClipSpec)})
    (tmp_path / "config.json").write_text(json.dumps({"vision_config": {"hidden_act": "gelu"}}))
    with pytest.raises(ValueError, match="vision_config.hidden_act='gelu'"):
        clip_weights.read_spec(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config.json"):
        clip_weights.read_spec(str(tmp_path / "missing"))


@pytest.mark.parametrize("source", ["flax", "safetensors"])
def test_towers_equal_transformers_goldens(golden, source):
    model, params = load_pretrained(FOLDER, source=source)
    embeds, tokens = encode_image(model, params, golden["pixel_values"])
    text = model.apply({"params": params}, jnp.asarray(golden["text_ids"]), method="encode_text")
    errors = {"image_embeds": max_error(embeds, golden["image_embeds"]),
              "tokens": max_error(tokens, golden["tokens"]),
              "text_embeds": max_error(text, golden["text_embeds"])}
    print(source, errors)
    assert max(errors.values()) <= TOLERANCE, errors
    assert tokens.shape == golden["tokens"].shape == (2, 17, 32)
    # The goldens are not degenerate: images and texts differ from each other.
    assert np.abs(golden["text_embeds"][0] - golden["text_embeds"][1]).max() > 0.1
    assert np.abs(golden["tokens"][0] - golden["tokens"][1]).max() > 0.1


def test_our_converter_equals_transformers_flax_conversion():
    _, from_flax, flax_report = clip_weights.load_clip_params(FOLDER, source="flax")
    _, from_torch, torch_report = clip_weights.load_clip_params(FOLDER, source="safetensors")
    assert flax_report.unused == torch_report.unused == ()
    a, b = flat(from_flax), flat(from_torch)
    assert a.keys() == b.keys()
    assert max(max_error(a[k], b[k]) for k in a) == 0.0


@pytest.mark.parametrize("size,grid", [(48, 6), (24, 3)])
def test_position_resize_equals_interpolate_pos_encoding(golden, size, grid):
    """transformers' interpolate_pos_encoding=True: torch bicubic, align_corners=False."""
    model, params = load_pretrained(FOLDER, image_size=size)
    assert model.spec.image_size == size and model.spec.num_image_tokens == grid * grid + 1
    embeds, tokens = encode_image(model, params, golden[f"pixel_values_{size}"])
    errors = (max_error(embeds, golden[f"image_embeds_{size}"]),
              max_error(tokens, golden[f"tokens_{size}"]))
    print(size, errors)
    assert max(errors) <= TOLERANCE
    _, original = load_pretrained(FOLDER)
    positions = lambda p: np.asarray(p["vision_model"]["embeddings"]["position_embedding"]
                                     ["embedding"])
    np.testing.assert_array_equal(positions(params)[0], positions(original)[0])  # CLS kept


def test_bicubic_matrix_properties():
    np.testing.assert_allclose(clip_weights.bicubic_matrix(7, 7), np.eye(7), atol=1e-12)
    m = clip_weights.bicubic_matrix(4, 6)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)  # constants stay constant
    # Output 0 of 4 -> 6: source x = 0.5 * 4/6 - 0.5 = -1/6, taps -2..1 clamped into [0, 3].
    t, a = 5 / 6, -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    expected = [far(t + 1) + near(t) + near(1 - t), far(2 - t), 0.0, 0.0]
    np.testing.assert_allclose(m[0], expected, atol=1e-12)


def test_converter_reports_unused_drops_buffers_and_names_bad_keys(spec):
    state = load_file(os.path.join(FOLDER, clip_weights.SAFETENSORS_FILE))
    target = abstract_params(spec)
    extra = dict(state, **{"text_model.embeddings.position_ids": np.arange(32)[None],
                           "vision_model.extra_head.weight": np.zeros((2, 2), np.float32)})
    params, report = clip_weights.convert_pytorch(extra, target, "extra.safetensors")
    assert report.unused == ("vision_model.extra_head.weight",)
    assert report.dropped == ("text_model.embeddings.position_ids",)
    kernel = flat(params)["vision_model/encoder/layers/1/mlp/fc1/kernel"]
    np.testing.assert_array_equal(kernel, state["vision_model.encoder.layers.1.mlp.fc1.weight"].T)
    conv = flat(params)["vision_model/embeddings/patch_embedding/kernel"]  # HWIO from OIHW
    oihw = state["vision_model.embeddings.patch_embedding.weight"]
    np.testing.assert_array_equal(conv[2, 5, 1], oihw[:, 1, 2, 5])

    missing = {k: v for k, v in state.items() if k != "text_model.final_layer_norm.weight"}
    with pytest.raises(ValueError, match=r"'text_model.final_layer_norm.weight'.*final_layer_norm"
                                         r"/scale"):
        clip_weights.convert_pytorch(missing, target)
    square = dict(state, **{"text_projection.weight": state["text_projection.weight"].T})
    with pytest.raises(ValueError, match=r"'text_projection.weight -> text_projection/kernel' "
                                         r"has shape \(16, 24\)"):
        clip_weights.convert_pytorch(square, target)
    # Every problem is named in one error, not only the first one met.
    several = dict(square, **{"logit_scale": np.zeros((2,), np.float32)})
    del several["text_model.final_layer_norm.weight"]
    with pytest.raises(ValueError) as error:
        clip_weights.convert_pytorch(several, target, "several.safetensors")
    message = str(error.value)
    assert message.startswith("several.safetensors: 3 problem(s): "), message
    for part in ("no 'text_model.final_layer_norm.weight'", "'logit_scale -> logit_scale' has "
                 "shape (2,)", "'text_projection.weight -> text_projection/kernel' has shape"):
        assert part in message, (part, message)


def test_flax_file_is_checked_against_the_tree(tmp_path, spec):
    folder = tmp_path / "clip"
    shutil.copytree(FOLDER, folder)
    config = json.loads((folder / "config.json").read_text())
    config["projection_dim"] = 8  # the weights were made with 16
    (folder / "config.json").write_text(json.dumps(config))
    # Both projections are named in one error.
    with pytest.raises(ValueError, match=r"flax_model.msgpack: 2 problem\(s\): "
                                         r"'text_projection/kernel' has shape \(24, 16\), the "
                                         r"model needs \(24, 8\); 'visual_projection/kernel' "
                                         r"has shape \(32, 16\)"):
        load_pretrained(str(folder), source="flax")
    os.remove(folder / clip_weights.FLAX_FILE)
    with pytest.raises(FileNotFoundError, match="flax_model.msgpack"):
        load_pretrained(str(folder), source="flax")


def test_bpe_tokenizer_equals_transformers_4_ids(golden):
    tokenizer = ClipBpeTokenizer(FOLDER, context_length=32)
    prompts = [str(p) for p in golden["token_prompts"]]
    np.testing.assert_array_equal(tokenizer(prompts), golden["prompt_ids"])
    assert tokenizer.eot_id == 813 and tokenizer.sot_id == 812
    # Rarely seen words are split into several BPE pieces, common ones are whole words.
    assert (golden["prompt_ids"][2] > 0).sum() > len(prompts[2].split()) + 2
    with pytest.raises(ValueError, match="context_length=32"):
        tokenizer([" ".join(["xylophone"] * 20)])
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        ClipBpeTokenizer(os.path.dirname(FOLDER), context_length=32)


def tiny_setup(tmp_path, spec, **clip):
    """(config, tables) of tests/helpers' tiny config with the fixture CLIP."""
    config = helpers.tiny_config(helpers.write_tiny_table(str(tmp_path)))
    config.model.clip.update({f.name: getattr(spec, f.name)
                              for f in dataclasses.fields(spec)}, weights=FOLDER, **clip)
    config.model.center_text_embeddings = False
    return config, class_tables.load_class_tables(config.dataset)


def test_init_params_loads_the_folder_and_the_cached_text_embeddings(tmp_path, spec):
    config, tables = tiny_setup(tmp_path, spec)
    assert isinstance(build_tokenizer(config.model.clip, []), ClipBpeTokenizer)
    model = hoiclip.build_model(config.model, tables)
    params = classifiers.init_params(model, jax.random.PRNGKey(0), config, tables)
    _, loaded = load_pretrained(FOLDER)
    a, b = flat(params["clip"]), flat(loaded)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # The tool writes what init_params computes from the tower.
    out = str(tmp_path / "text.npz")
    text_tool.main(["--clip", FOLDER, "--dataset", "hico", "--out", out,
                    "--class-table", config.dataset.class_table])
    hoi, obj = prompt_files.load_prompt_embeddings(out, tables, spec.embed_dim)
    assert hoi.shape == (5, 16) and obj.shape == (4, 16)
    np.testing.assert_allclose(params["hoi_visual_projection"]["kernel"], hoi.T, atol=1e-5)
    np.testing.assert_allclose(params["obj_visual_projection"]["kernel"], obj.T, atol=1e-5)

    # With the file configured, the classifiers come from it (here: a changed copy).
    changed = str(tmp_path / "changed.npz")
    prompt_files.save_prompt_embeddings(changed, hoi[::-1], obj, tables, FOLDER)
    config.model.text_embeddings = changed
    got_hoi, got_obj = classifiers.prompt_embeddings(model, params, config, tables)
    np.testing.assert_array_equal(got_hoi, hoi[::-1])
    np.testing.assert_array_equal(got_obj, obj)
    prompt_files.save_prompt_embeddings(changed, hoi[:, :8], obj[:, :8], tables, FOLDER)
    with pytest.raises(ValueError, match=r"changed.npz: 'hoi' has shape \(5, 8\), expected "
                                         r"\(5, 16\)"):
        classifiers.prompt_embeddings(model, params, config, tables)
    config.model.center_text_embeddings = True
    with pytest.raises(ValueError, match="center_text_embeddings"):
        classifiers.prompt_embeddings(model, params, config, tables)


def test_config_sizes_must_match_the_checkpoint(tmp_path, spec):
    config, _ = tiny_setup(tmp_path, spec, vision_layers=3)
    with pytest.raises(ValueError, match=r"config.model.clip.vision_layers=3 but .*clip_tiny/"
                                         r"config.json gives 2"):
        clip_weights.params_for_config(config.model.clip, abstract_params(spec))


def test_text_embedding_tool_on_vcoco_prompts(tmp_path, golden):
    out = str(tmp_path / "vcoco.npz")
    text_tool.main(["--clip", FOLDER, "--dataset", "vcoco", "--out", out])
    tables = class_tables.load_class_tables(mlc.ConfigDict(dict(name="vcoco", class_table="")))
    hoi, obj = prompt_files.load_prompt_embeddings(out, tables, 16)
    assert hoi.shape == (263, 16) and obj.shape == (82, 16)
    np.testing.assert_allclose(np.linalg.norm(hoi, axis=1), 1.0, atol=1e-5)
    assert np.unique(hoi.round(4), axis=0).shape[0] == 263  # every prompt its own embedding
    # The tool's text path equals transformers' text features of the same prompts.
    model, params = load_pretrained(FOLDER)
    prompts = [str(p) for p in golden["token_prompts"]]
    got = text_tool.encode_prompts(model, params, ClipBpeTokenizer(FOLDER, 32), prompts, 3)
    ref = golden["text_embeds"][:len(prompts)]
    np.testing.assert_allclose(got, ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
