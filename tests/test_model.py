"""HOICLIP model: output contract, reference semantics of its parts, parameter layout and counts."""
import copy
import json
import math
import os

import flax.linen as nn
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, hico, hico5p, vcoco
from data_pipeline import class_tables
from data_pipeline.synthetic import generate as synthetic
from hoiclip_jax.train import optim
from hoiclip_jax.models import attention, backbone, detr, hoiclip, interaction
from hoiclip_jax.weights.tokenizer import WordTokenizer, build_tokenizer
from hoiclip_jax.tools import param_count
from hoiclip_jax.weights import classifiers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Key/shape table of a real HOICLIP checkpoint (copied from shared/data; facts only, no weights).
STATE_DICT_TABLE = os.path.join(REPO, "tests", "fixtures", "hoiclip_state_dict.json")


def normalize(x):
    x = np.asarray(x)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def demo_setup(tmp_path_factory):
    """(config, tables, model, params) of configs/demo.py on the synthetic class table."""
    path = tmp_path_factory.mktemp("demo") / "classes.json"
    path.write_text(json.dumps(synthetic.class_table()))
    config = demo.get_config()
    config.dataset.class_table = str(path)
    tables = class_tables.load_class_tables(config.dataset)
    model = hoiclip.build_model(config.model, tables)
    params = classifiers.init_params(model, jax.random.PRNGKey(0), config, tables)
    return config, tables, model, params


@pytest.fixture(scope="module")
def encode_text(demo_setup):
    """Jitted text tower of the demo model: token ids [n, T] -> embeddings [n, E]."""
    _, _, model, params = demo_setup
    fn = jax.jit(lambda t: model.apply({"params": params}, t, method=model.encode_text))
    return lambda tokens: np.asarray(fn(jnp.asarray(tokens)))


def random_inputs(config, batch_size: int, seed: int):
    """(image, pixel_mask, clip_image) of the config's shapes; the last image is padded (its
    bottom quarter and right three eighths are not real pixels)."""
    rng = np.random.default_rng(seed)
    (h, w), c = config.dataset.canvas, config.dataset.clip_image_size
    image = rng.normal(size=(batch_size, h, w, 3)).astype(np.float32)
    mask = np.ones((batch_size, h, w), bool)
    mask[-1, 3 * h // 4:], mask[-1, :, 5 * w // 8:] = False, False
    image[~mask] = 0.0
    return image, mask, rng.normal(size=(batch_size, c, c, 3)).astype(np.float32)


def test_demo_forward_contract(demo_setup):
    config, tables, model, params = demo_setup
    image, mask, clip_image = random_inputs(config, 2, seed=0)
    out = jax.jit(lambda p, *x: model.apply({"params": p}, *x))(params, image, mask, clip_image)

    m, s = config.model, config.model.clip
    lbn = (m.dec_layers, 2, m.num_queries)
    tokens = (s.image_size // s.patch_size) ** 2 + 1
    expected = {"hoi_logits": lbn + (tables.num_hois,),
                "obj_logits": lbn + (tables.num_objects + 1,),
                "sub_boxes": lbn + (4,), "obj_boxes": lbn + (4,), "clip_cls": (2, s.embed_dim),
                "clip_visual": (2, tokens, s.embed_dim)}
    assert {k: v.shape for k, v in out.items()} == expected
    for key, value in out.items():
        assert value.dtype == jnp.float32 and np.isfinite(value).all(), key
    np.testing.assert_allclose(np.linalg.norm(out["clip_cls"], axis=-1), 1.0, rtol=1e-5)
    for key in ("sub_boxes", "obj_boxes"):
        assert ((out[key] > 0) & (out[key] < 1)).all()
    # Different images give different predictions (no broadcasting mix-up across the batch).
    assert not np.allclose(out["hoi_logits"][:, 0], out["hoi_logits"][:, 1])


def test_init_params_fills_classifiers_from_text(demo_setup, encode_text):
    config, tables, _, params = demo_setup
    tokenizer = build_tokenizer(config.model.clip,
                                list(tables.hoi_prompts) + list(tables.object_prompts))
    # Full-length tokens: init_params trims after the last EOT, which must not change anything.
    hoi = normalize(encode_text(tokenizer(list(tables.hoi_prompts))))
    obj = normalize(encode_text(tokenizer(list(tables.object_prompts))))
    assert config.model.center_text_embeddings  # the demo's random CLIP: centred embeddings
    hoi, obj = normalize(hoi - hoi.mean(0)), normalize(obj - obj.mean(0))
    np.testing.assert_allclose(params["hoi_visual_projection"]["kernel"], hoi.T, atol=1e-5)
    np.testing.assert_allclose(params["obj_visual_projection"]["kernel"], obj.T, atol=1e-5)
    cosine = hoi @ hoi.T
    assert cosine[~np.eye(len(hoi), dtype=bool)].max() < 0.999  # prompts are told apart
    verbs = np.stack([normalize(hoi[tables.hoi_to_verb == v].mean(0))
                      for v in range(tables.num_verbs)])
    np.testing.assert_allclose(params["verb_projection"]["kernel"], verbs.T, atol=1e-5)
    # The frozen biases keep PyTorch's default U(+-1/sqrt(E)) init (§1.4, §1.6).
    bound = config.model.clip.embed_dim ** -0.5
    for name in ("hoi_visual_projection", "obj_visual_projection"):
        bias = np.asarray(params[name]["bias"])
        assert np.abs(bias).max() <= bound and np.abs(bias).max() > bound / 4


def test_text_tower_pools_at_eot(demo_setup, encode_text):
    config, _, model, params = demo_setup
    tokenizer = WordTokenizer(["a photo of a ball", "a person holding a box"],
                              config.model.clip.vocab_size, config.model.clip.context_length)
    tokens = tokenizer(["a photo of a ball", "a person holding a box"])
    emb, state = model.apply({"params": params}, jnp.asarray(tokens), method=model.encode_text,
                             capture_intermediates=True, mutable=["intermediates"])
    hidden = state["intermediates"]["clip"]["text_model"]["final_layer_norm"]["__call__"][0]
    eot = np.array([6, 6])  # start + 5 words
    assert (np.argmax(tokens, axis=1) == eot).all()
    expected = np.asarray(hidden)[np.arange(2), eot] @ params["clip"]["text_projection"]["kernel"]
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    # Causal attention: tokens after the EOT cannot change the result, tokens before it do.
    after, before = tokens.copy(), tokens.copy()
    after[:, 7:] = 3
    before[0, 2] = tokenizer.vocab["person"]
    np.testing.assert_allclose(encode_text(after), emb, atol=1e-5)
    assert not np.allclose(encode_text(before)[0], emb[0], atol=1e-3)


def test_word_tokenizer_layout_and_errors():
    tok = WordTokenizer(["a photo of a Ball", "a person"], vocab_size=10, context_length=8)
    # Words sorted: a=1, ball=2, of=3, person=4, photo=5; start 8, end 9 (the largest id).
    np.testing.assert_array_equal(tok(["A photo of a ball", "a person"]),
                                  [[8, 1, 5, 3, 1, 2, 9, 0], [8, 1, 4, 9, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="vocab_size"):
        WordTokenizer(["a b c d e f g h"], vocab_size=10, context_length=16)
    with pytest.raises(ValueError, match="context_length"):
        tok(["a a a a a a a"])
    with pytest.raises(ValueError, match="'kite'"):
        tok(["a kite"])
    clip_config = demo.get_config().model.clip
    clip_config.weights = "weights/no-such-clip-folder"  # pretrained: the folder's BPE vocabulary
    with pytest.raises(FileNotFoundError, match="no-such-clip-folder/vocab.json"):
        build_tokenizer(clip_config, ["a person"])


def test_frozen_batchnorm_is_scale_and_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    p = {"scale": rng.normal(size=4), "bias": rng.normal(size=4), "mean": rng.normal(size=4),
         "var": rng.uniform(0.1, 2.0, size=4)}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    y = backbone.FrozenBatchNorm(1e-5).apply({"params": p}, x)
    expected = (x - p["mean"]) / np.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_backbone_paths_strides_and_freezing(demo_setup):
    config, _, _, _ = demo_setup
    spec = backbone.BackboneSpec("bottleneck", (3, 4, 6, 3), 64, 1e-5)
    c5 = jax.eval_shape(lambda x: backbone.ResNet(spec).init_with_output(
        jax.random.PRNGKey(0), x)[0], jax.ShapeDtypeStruct((1, 1333, 1333, 3), jnp.float32))
    assert c5.shape == (1, 42, 42, 2048)  # C5 of ResNet-50: stride 32, 2048 channels
    small = backbone.BackboneSpec("bottleneck", (1, 1, 1), 16, 1e-5, "frozen_bn")
    params = {"backbone": jax.eval_shape(backbone.ResNet(small).init, jax.random.PRNGKey(0),
                                         jnp.zeros((1, 64, 64, 3)))["params"]}  # paths only
    flat = traverse_util.flatten_dict(params["backbone"], sep="/")
    bn_modules = {p.rsplit("/", 1)[0] for p in flat if "bn" in p}
    assert "stem/bn" in bn_modules and "layer1/block0/downsample_bn" in bn_modules
    for module in bn_modules:
        assert {p.rsplit("/", 1)[1] for p in flat if p.startswith(module + "/")} == \
            {"scale", "bias", "mean", "var"}
    # The reference's freezing (hico groups): FrozenBN, stem and layer1 frozen; layer2+ convs not.
    labels = traverse_util.flatten_dict(
        optim.label_params(params, hico.get_config().optim.groups), sep="/")
    for path, group in labels.items():
        frozen = "bn" in path or path.startswith(("backbone/stem/", "backbone/layer1/"))
        assert group == ("frozen" if frozen else "backbone"), path


def test_group_norm_backbone_normalises_and_trains(demo_setup):
    config, _, _, params = demo_setup
    assert config.model.backbone.norm == "group_norm"
    flat = traverse_util.flatten_dict(params["backbone"], sep="/")
    assert {p.rsplit("/", 1)[1] for p in flat if "bn" in p} == {"scale", "bias"}
    labels = traverse_util.flatten_dict(
        optim.label_params({"backbone": params["backbone"]}, config.optim.groups), sep="/")
    assert set(labels.values()) == {"default"}  # trained from scratch: nothing frozen
    norm = backbone.make_norm("group_norm", 1e-5, jnp.float32, "bn")
    x = np.random.default_rng(0).normal(5.0, 30.0, size=(2, 4, 4, 16)).astype(np.float32)
    y = np.asarray(norm.apply(norm.init(jax.random.PRNGKey(0), x), x))
    groups = y.reshape(2, 16, 4, 4)  # [image, position, group, channel in group]
    np.testing.assert_allclose(groups.mean(axis=(1, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(groups.std(axis=(1, 3)), 1.0, atol=1e-3)
    with pytest.raises(ValueError, match="backbone.norm"):
        backbone.make_norm("batch_norm", 1e-5, jnp.float32, "bn")
    spec = config.model.backbone
    out_channels = 4 * spec.width * 2 ** (len(spec.stage_sizes) - 1)  # bottleneck x4, last stage
    assert params["input_proj"]["kernel"].shape == (1, 1, out_channels, config.model.hidden_dim)


def test_downsample_mask_is_pytorch_nearest():
    mask = np.random.default_rng(2).random((1, 10, 7)) > 0.5
    small = backbone.downsample_mask(jnp.asarray(mask), (4, 3))
    # F.interpolate(mode='nearest') reads source index floor(i * in / out).
    np.testing.assert_array_equal(small[0], mask[0][[0, 2, 5, 7]][:, [0, 2, 4]])


def test_sine_position_embedding_values():
    mask = np.zeros((1, 4, 6), bool)
    mask[0, :3, :4] = True  # a 3 x 4 image padded to 4 x 6
    pos = np.asarray(detr.sine_position_embedding(jnp.asarray(mask), 8))
    assert pos.shape == (1, 4, 6, 16)
    two_pi, f1 = 2 * np.pi, 10000.0 ** (2 / 8)
    y = (np.arange(4)[:, None] + 1).clip(max=3) / 3 * two_pi * np.ones((1, 4))  # rows, cols < 4
    x = (np.arange(4)[None, :] + 1) / 4 * two_pi * np.ones((4, 1))
    got = pos[0, :, :4]
    np.testing.assert_allclose(got[..., 0], np.sin(y), atol=1e-5)   # pos_y first, sin/cos
    np.testing.assert_allclose(got[..., 1], np.cos(y), atol=1e-5)   # interleaved
    np.testing.assert_allclose(got[..., 2], np.sin(y / f1), atol=1e-5)
    np.testing.assert_allclose(got[..., 3], np.cos(y / f1), atol=1e-5)
    # pos_x follows; the padding row 3 has no real pixel, so x is only checked on rows 0-2.
    np.testing.assert_allclose(got[:3, :, 8], np.sin(x[:3]), atol=1e-5)
    np.testing.assert_allclose(got[:3, :, 11], np.cos(x[:3] / f1), atol=1e-5)
    # A column without real pixels has y = 0 everywhere.
    np.testing.assert_allclose(pos[0, :, 5, 0:2], [[0.0, 1.0]] * 4, atol=1e-6)


def test_mask_reaches_the_attention():
    """Padded memory positions do not influence real memory positions nor the decoder outputs.

    Exact padding invariance of the whole model does not hold under the reference semantics:
    the backbone convolutions see the padded pixels and the CLIP decoder attends to padded
    memory. What must hold is that the DETR attention ignores masked keys.
    """
    rng = np.random.default_rng(3)
    b, s, q, d = 2, 12, 6, 16
    src, pos = rng.normal(size=(2, b, s, d)).astype(np.float32)
    query_pos = rng.normal(size=(b, q, d)).astype(np.float32)
    mask = np.ones((b, s), bool)
    mask[0, 8:], mask[1, 5:] = False, False
    enc, dec = detr.Encoder(2, 2, 32, 0.1), detr.InstanceDecoder(2, 2, 32, 0.1)
    enc_vars = enc.init(jax.random.PRNGKey(0), src, pos, mask)
    memory = enc.apply(enc_vars, src, pos, mask)
    tgt = np.zeros_like(query_pos)
    dec_vars = dec.init(jax.random.PRNGKey(1), tgt, memory, query_pos, pos, mask)

    def run(src, pos):
        memory = enc.apply(enc_vars, src, pos, mask)
        return memory, dec.apply(dec_vars, tgt, memory, query_pos, pos, mask)

    memory, hs = run(src, pos)
    noise = 5 * rng.normal(size=src.shape).astype(np.float32)
    memory2, hs2 = run(np.where(mask[..., None], src, src + noise),
                       np.where(mask[..., None], pos, pos - noise))
    np.testing.assert_allclose(hs2, hs, atol=1e-5)
    np.testing.assert_allclose(memory2[mask], memory[mask], atol=1e-5)
    assert not np.allclose(memory2[~mask], memory[~mask], atol=1e-2)
    _, hs3 = run(src + noise * (np.arange(s) == 0)[None, :, None], pos)
    assert not np.allclose(hs3, hs, atol=1e-3)  # a real position does matter


def test_fusion_layer_shares_one_cross_attention_and_norm(demo_setup):
    _, _, _, params = demo_setup
    inter = params["interaction"]
    for i in range(3):
        layer = inter[f"layer{i}"]
        assert set(layer) == {"self_attn", "multihead_attn", "linear1", "linear2",
                              "norm1", "norm2", "norm3"}
        assert sorted(k for k, v in layer.items() if "q_proj" in v) == ["multihead_attn",
                                                                        "self_attn"]
    # Functionally: t = LN2(t + X(t, V_s)) + LN2(t + X(t, V_d')), one X and one LN2.
    rng = np.random.default_rng(4)
    tgt, clip_tokens, memory = (rng.normal(size=(2, n, 16)).astype(np.float32) for n in (3, 5, 7))
    fusion = interaction.FusionLayer(2, 32, 0.1)
    variables = fusion.init(jax.random.PRNGKey(0), tgt, clip_tokens, memory, None, True)
    p = variables["params"]
    mha = lambda x, kv: attention.MultiheadAttention(2).apply({"params": p["multihead_attn"]},
                                                               x, kv, kv)
    ln = lambda name, x: attention.layer_norm().apply({"params": p[name]}, x)
    t = ln("norm1", tgt + attention.MultiheadAttention(2).apply(
        {"params": p["self_attn"]}, tgt, tgt, tgt))
    t = ln("norm2", t + mha(t, clip_tokens)) + ln("norm2", t + mha(t, memory))
    ffn = np.maximum(t @ p["linear1"]["kernel"] + p["linear1"]["bias"], 0)
    t = ln("norm3", t + ffn @ p["linear2"]["kernel"] + p["linear2"]["bias"])
    np.testing.assert_allclose(fusion.apply(variables, tgt, clip_tokens, memory, None, True), t,
                               atol=1e-5)


def test_q_inter_variants(demo_setup):
    config, tables, model, _ = demo_setup
    mix_config = copy.deepcopy(config)
    mix_config.model.q_inter = "mix2x2"
    mix_model = hoiclip.build_model(mix_config.model, tables)
    flat_mean = traverse_util.flatten_dict(hoiclip.abstract_params(model, config.dataset),
                                           sep="/")
    flat_mix = traverse_util.flatten_dict(hoiclip.abstract_params(mix_model, config.dataset),
                                          sep="/")
    assert set(flat_mix) - set(flat_mean) == {"interaction/q_inter/mix/kernel",
                                              "interaction/q_inter/mix/bias"}
    assert set(flat_mean) <= set(flat_mix)
    assert all(flat_mean[k].shape == flat_mix[k].shape for k in flat_mean)
    assert flat_mix["interaction/q_inter/mix/kernel"].shape == (2, 2)
    # A mixing that yields ((h + o) / 2, 0) turns mix2x2 into 'mean' when proj has no bias.
    rng = np.random.default_rng(5)
    h, o = rng.normal(size=(2, 2, 3, 8)).astype(np.float32)
    mean_q = interaction.InteractionQuery(12, "mean")
    p = dict(mean_q.init(jax.random.PRNGKey(0), h, o)["params"])
    p["proj"] = {**p["proj"], "bias": np.zeros(12, np.float32)}
    p_mix = {**p, "mix": {"kernel": np.array([[0.5, 0.0], [0.5, 0.0]], np.float32),
                          "bias": np.zeros(2, np.float32)}}
    np.testing.assert_allclose(
        interaction.InteractionQuery(12, "mix2x2").apply({"params": p_mix}, h, o),
        mean_q.apply({"params": p}, h, o), atol=1e-5)
    mix_config.model.q_inter = "max"
    with pytest.raises(ValueError, match="q_inter"):
        hoiclip.build_model(mix_config.model, tables)


def test_inter2verb_hidden_width_is_half_the_clip_embedding(demo_setup):
    """The reference's inter2verb is E -> E/2 -> E/2 -> E (512 -> 256 -> 256 -> 512), whatever
    DETR's hidden_dim; the demo has E = 64 and hidden_dim = 64, so the two rules differ."""
    config, _, _, params = demo_setup
    e = config.model.clip.embed_dim
    assert config.model.hidden_dim != e // 2
    shapes = [params["inter2verb"][f"layer{i}"]["kernel"].shape for i in range(3)]
    assert shapes == [(e, e // 2), (e // 2, e // 2), (e // 2, e)]


def test_mask_padded_memory_hides_the_padded_positions(demo_setup):
    """Off (the reference): the interaction decoder reads every memory position. On: what sits
    at padded positions cannot change its output; the model passes DETR's key mask."""
    rng = np.random.default_rng(5)
    h, o = (rng.normal(size=(2, 3, 16)).astype(np.float32) for _ in range(2))
    clip_tokens = rng.normal(size=(2, 5, 24)).astype(np.float32)
    memory = rng.normal(size=(2, 7, 16)).astype(np.float32)
    mask = np.ones((2, 7), bool)
    mask[:, 4:] = False
    changed = memory.copy()
    changed[:, 4:] += 10.0
    decoder = interaction.InteractionDecoder(24, 2, 2, 32, 0.0, "mean")
    variables = decoder.init(jax.random.PRNGKey(0), h, o, memory, clip_tokens)
    run = lambda m, key_mask: decoder.apply(variables, h, o, m, clip_tokens, True, key_mask)
    np.testing.assert_allclose(run(memory, mask), run(changed, mask), atol=1e-6)
    assert np.abs(np.asarray(run(memory, None) - run(changed, None))).max() > 1e-3

    config, tables, _, params = demo_setup
    image, pixel_mask, clip_image = random_inputs(config, 1, seed=3)
    pixel_mask = np.asarray(pixel_mask).copy()
    pixel_mask[:, :, pixel_mask.shape[2] // 2:] = False  # the right half is padding

    def memory_mask_seen(flag):
        model_config = copy.deepcopy(config.model)
        model_config.mask_padded_memory = flag
        seen = []

        def spy(next_fun, args, kwargs, context):
            if (isinstance(context.module, interaction.InteractionDecoder)
                    and context.method_name == "__call__"):
                seen.append(args[5] if len(args) > 5 else kwargs.get("memory_mask"))
            return next_fun(*args, **kwargs)

        def forward(*inputs):
            with nn.intercept_methods(spy):
                hoiclip.build_model(model_config, tables).apply({"params": params}, *inputs)
            return seen[0]
        # Jitted, only the mask is computed (XLA drops the rest): 1 s instead of 20 eagerly.
        return jax.jit(forward)(image, pixel_mask, clip_image)
    assert memory_mask_seen(False) is None
    seen = np.asarray(memory_mask_seen(True))
    assert seen.shape[0] == 1 and seen.any() and not seen.all()


def test_encoder_input_pos_adds_positions_to_the_encoder_input(demo_setup):
    config, tables, _, params = demo_setup
    image, mask, clip_image = random_inputs(config, 1, seed=3)
    h, w = config.dataset.canvas

    def encoder_input(flag):
        """The `src` the encoder receives, [1, S, D], with encoder_input_pos = flag."""
        model_config = copy.deepcopy(config.model)
        model_config.encoder_input_pos = flag
        model = hoiclip.build_model(model_config, tables)
        seen = []

        def spy(next_fun, args, kwargs, context):
            if isinstance(context.module, detr.Encoder) and context.method_name == "__call__":
                seen.append(args[0])
            return next_fun(*args, **kwargs)

        def forward(*inputs):
            with nn.intercept_methods(spy):
                model.apply({"params": params}, *inputs)
            return seen[0]
        return np.asarray(jax.jit(forward)(image, mask, clip_image))  # only `src` is computed

    stride = hoiclip.build_model(config.model, tables).backbone_spec.stride
    feat_hw = (-(-h // stride), -(-w // stride))
    pos = detr.sine_position_embedding(backbone.downsample_mask(mask, feat_hw),
                                       config.model.hidden_dim // 2)
    np.testing.assert_allclose(encoder_input(True) - encoder_input(False),
                               np.asarray(pos).reshape(1, -1, config.model.hidden_dim),
                               atol=1e-5)


def test_layer_counts_must_pair(demo_setup):
    config, tables, _, _ = demo_setup
    bad = copy.deepcopy(config.model)
    bad.inter_dec_layers = 2
    with pytest.raises(ValueError, match="inter_dec_layers"):
        hoiclip.build_model(bad, tables)


@pytest.mark.parametrize("config_module, num_hois, num_obj_logits, num_verbs",
                         [(hico, 600, 81, 117), (hico5p, 600, 81, 117), (vcoco, 263, 82, 29)])
def test_full_configs_build(config_module, num_hois, num_obj_logits, num_verbs):
    config = config_module.get_config()
    tables = class_tables.load_class_tables(config.dataset)
    model = hoiclip.build_model(config.model, tables)
    inputs = hoiclip.dummy_inputs(config.dataset)

    def forward(rng):
        variables = model.init(rng, *inputs, train=False)
        return variables["params"], model.apply(variables, *inputs, train=False)

    params, out = jax.eval_shape(forward, jax.random.PRNGKey(0))
    assert out["hoi_logits"].shape == (3, 1, 64, num_hois)
    assert out["obj_logits"].shape == (3, 1, 64, num_obj_logits)
    assert out["sub_boxes"].shape == out["obj_boxes"].shape == (3, 1, 64, 4)
    assert out["clip_cls"].shape == (1, 512) and out["clip_visual"].shape == (1, 50, 512)
    assert params["verb_projection"]["kernel"].shape == (512, num_verbs)
    assert params["input_proj"]["kernel"].shape == (1, 1, 2048, 256)
    assert params["clip"]["vision_model"]["embeddings"]["patch_embedding"]["kernel"].shape == \
        (32, 32, 3, 768)


def test_hico_param_counts_match_the_reference_checkpoint():
    with open(STATE_DICT_TABLE) as f:
        reference = json.load(f)
    keys = reference["keys"]
    size = lambda entry: math.prod(entry["shape"])
    # Trainable: the keys that are trainable AND used by the forward pass (the reference also
    # builds unused modules, e.g. the GEN-VLKT interaction decoder and the fusion layers' norm4).
    trainable = sum(size(e) for e in keys.values() if e["trainable"] and e["used_in_forward"])
    # Frozen: every other non-trainable key, FrozenBN buffers included, except verb2hoi_proj and
    # verb2hoi_proj_eval: here verb2hoi is a constant built from the class tables and zero-shot
    # evaluation (verb2hoi_proj_eval) is not part of the model.
    frozen = sum(size(e) for k, e in keys.items()
                 if not e["trainable"] and not k.startswith("verb2hoi_proj"))
    counts = param_count.config_param_counts(hico.get_config())
    assert counts["trainable"] == trainable
    assert counts["frozen"] == frozen
    assert counts["modules"]["clip"][0] == reference["summary"]["n_params_clip_model"]


def test_clip_params_follow_the_hugging_face_flax_layout(demo_setup):
    config, _, _, params = demo_setup
    s = config.model.clip
    d, w, p, f, e = s.vision_width, s.text_width, s.patch_size, s.vision_mlp_dim, s.embed_dim
    layer = lambda width, mlp: {
        "layer_norm1/scale": (width,), "layer_norm1/bias": (width,),
        **{f"self_attn/{n}/{k}": (width, width) if k == "kernel" else (width,)
           for n in ("q_proj", "k_proj", "v_proj", "out_proj") for k in ("kernel", "bias")},
        "layer_norm2/scale": (width,), "layer_norm2/bias": (width,),
        "mlp/fc1/kernel": (width, mlp), "mlp/fc1/bias": (mlp,),
        "mlp/fc2/kernel": (mlp, width), "mlp/fc2/bias": (width,)}
    expected = {
        "vision_model/embeddings/class_embedding": (d,),
        "vision_model/embeddings/patch_embedding/kernel": (p, p, 3, d),
        "vision_model/embeddings/position_embedding/embedding": ((s.image_size // p) ** 2 + 1, d),
        "vision_model/pre_layrnorm/scale": (d,), "vision_model/pre_layrnorm/bias": (d,),
        "vision_model/post_layernorm/scale": (d,), "vision_model/post_layernorm/bias": (d,),
        "visual_projection/kernel": (d, e),
        "text_model/embeddings/token_embedding/embedding": (s.vocab_size, w),
        "text_model/embeddings/position_embedding/embedding": (s.context_length, w),
        "text_model/final_layer_norm/scale": (w,), "text_model/final_layer_norm/bias": (w,),
        "text_projection/kernel": (w, e),
        "logit_scale": (),
    }
    for i in range(s.vision_layers):
        expected.update({f"vision_model/encoder/layers/{i}/{k}": v
                         for k, v in layer(d, f).items()})
    for i in range(s.text_layers):
        expected.update({f"text_model/encoder/layers/{i}/{k}": v
                         for k, v in layer(w, s.text_mlp_dim).items()})
    got = {k: v.shape for k, v in traverse_util.flatten_dict(params["clip"], sep="/").items()}
    assert got == expected
