"""Released HOICLIP checkpoints (`{'model': state_dict}`, reference §1, §4.3) -> our params.

Key names are those of `HOICLIP.state_dict()` (tables: tests/fixtures/hoiclip_state_dict.json). The
DETR part uses `detr_import.DETR_RULES`; the rest:
- `transformer.clip_interaction_decoder.layers.{i}.*`, `.norm` -> `interaction/layer{i}/*`,
  `interaction/norm`;
- `transformer.obj_class_fc`, `transformer.obj_class_ln` (V_d') -> `interaction/memory_proj`,
  `interaction/memory_norm`;
- `transformer.queries2spacial_proj(_norm)` (Q_inter 'mean') -> `interaction/q_inter/proj`, `norm`;
- the reproduction's 'mix2x2' Q_inter ([R]): `transformer.queries2special_{vertial,horizontal}
  _proj`, `queries2special_proj_norm` -> `interaction/q_inter/mix` (the [2, 2] one), `proj`, `norm`;
- `query_embed_h/o`, `pos_guided_embedd` -> `query_embed_h/o`, `pos_guided_embed`;
- `obj_class_fc.0`, `obj_class_fc.1` -> `obj_class_fc`, `obj_class_ln`;
- `visual_projection`, `obj_visual_projection`, `verb_projection` -> `hoi_visual_projection`,
  `obj_visual_projection`, `verb_projection`; `inter2verb.layers.{i}` -> `inter2verb/layer{i}`;
- `logit_scale`, `obj_logit_scale` -> the same names;
- `clip_model.*` (OpenAI CLIP names) -> `clip/*` (Hugging Face Flax CLIP layout, below).
Ignored (reported): the unused modules `transformer.interaction_decoder`,
`transformer.inter_guided_embedd`, `hoi_class_fc` (§0), the never-called fusion-layer `norm4`,
`verb2hoi_proj(_eval)` (a constant built from the class tables here) and the zero-shot
`eval_visual_projection`.

CLIP (OpenAI -> Hugging Face Flax): `visual.conv1` OIHW -> `patch_embedding` HWIO; `ln_pre` ->
`pre_layrnorm`; `resblocks.{i}.attn` (packed in_proj) -> `layers/{i}/self_attn/{q,k,v,out}_proj`;
`ln_1/ln_2` -> `layer_norm1/2`; `mlp.c_fc/c_proj` -> `mlp/fc1/fc2`; `ln_post` -> `post_layernorm`;
`visual.proj` [768, 512] and `text_projection` [512, 512] are used as `x @ proj`, so they are the
Flax kernels as they are; `positional_embedding`s -> `position_embedding/embedding`;
`token_embedding` -> `token_embedding/embedding`; `ln_final` -> `final_layer_norm`. Released
checkpoints hold CLIP in float16 (§1.7); arrays are cast to our params' dtype.
"""
from collections.abc import Mapping

import numpy as np

from hoiclip_jax.weights import mapping, torch_pickle
from hoiclip_jax.weights.detr_import import DETR_IGNORES, DETR_RULES
from hoiclip_jax.weights.mapping import Ignore, Rule

_FUSION = r"transformer\.clip_interaction_decoder\.layers\.(\d+)"

HOICLIP_RULES = [
    Rule(rf"{_FUSION}\.(self_attn|multihead_attn)", "interaction/layer{0}/{1}", "mha"),
    Rule(rf"{_FUSION}\.(linear[12])", "interaction/layer{0}/{1}", "linear"),
    Rule(rf"{_FUSION}\.(norm[123])", "interaction/layer{0}/{1}", "layernorm"),
    Rule(r"transformer\.clip_interaction_decoder\.norm", "interaction/norm", "layernorm"),
    Rule(r"transformer\.obj_class_fc", "interaction/memory_proj", "linear"),
    Rule(r"transformer\.obj_class_ln", "interaction/memory_norm", "layernorm"),
    Rule(r"transformer\.queries2spacial_proj", "interaction/q_inter/proj", "linear"),
    Rule(r"transformer\.queries2spacial_proj_norm", "interaction/q_inter/norm", "layernorm"),
    # The reproduction's Q_inter, renamed by `_rename_mix`.
    Rule(r"transformer\.q_inter_mix", "interaction/q_inter/mix", "linear"),
    Rule(r"transformer\.q_inter_proj", "interaction/q_inter/proj", "linear"),
    Rule(r"transformer\.queries2special_proj_norm", "interaction/q_inter/norm", "layernorm"),
    Rule(r"(query_embed_[ho])", "{0}", "embedding"),
    Rule(r"pos_guided_embedd", "pos_guided_embed", "embedding"),
    Rule(r"obj_class_fc\.0", "obj_class_fc", "linear"),
    Rule(r"obj_class_fc\.1", "obj_class_ln", "layernorm"),
    Rule(r"visual_projection", "hoi_visual_projection", "linear"),
    Rule(r"obj_visual_projection", "obj_visual_projection", "linear"),
    Rule(r"verb_projection", "verb_projection", "linear"),
    Rule(r"inter2verb\.layers\.(\d)", "inter2verb/layer{0}", "linear"),
    Rule(r"(obj_logit_scale|logit_scale)", "{0}", "param"),
]

HOICLIP_IGNORES = [
    Ignore(r"transformer\.inter_guided_embedd\.weight",
           "built, never used by HOICLIP (§0, §1.5 step 2)"),
    Ignore(r"hoi_class_fc\..*", "built, never used by HOICLIP (§0)"),
    Ignore(rf"{_FUSION}\.norm4\.(weight|bias)", "in the fusion layer, never called (§1.5)"),
    Ignore(r"verb2hoi_proj(_eval)?", "a constant here, built from the class tables (§1.6)"),
    Ignore(r"eval_visual_projection\.weight", "zero-shot evaluation copy of the HOI classifier"),
]


def clip_rules(prefix: str = "clip_model.") -> list[Rule]:
    """OpenAI CLIP names under `prefix` -> our `clip/` subtree (Hugging Face Flax layout)."""
    p = prefix.replace(".", r"\.")

    def tower(torch_prefix: str, ours: str) -> list[Rule]:
        block = rf"{p}{torch_prefix}transformer\.resblocks\.(\d+)"
        layer = f"clip/{ours}/encoder/layers/{{0}}"
        return [Rule(rf"{block}\.attn", f"{layer}/self_attn", "mha"),
                Rule(rf"{block}\.ln_([12])", f"{layer}/layer_norm{{1}}", "layernorm"),
                Rule(rf"{block}\.mlp\.c_fc", f"{layer}/mlp/fc1", "linear"),
                Rule(rf"{block}\.mlp\.c_proj", f"{layer}/mlp/fc2", "linear")]

    vision, text = "clip/vision_model", "clip/text_model"
    return tower(r"visual\.", "vision_model") + tower("", "text_model") + [
        Rule(rf"{p}visual\.class_embedding", f"{vision}/embeddings/class_embedding", "param"),
        Rule(rf"{p}visual\.positional_embedding",
             f"{vision}/embeddings/position_embedding/embedding", "param"),
        Rule(rf"{p}visual\.conv1", f"{vision}/embeddings/patch_embedding", "conv"),
        Rule(rf"{p}visual\.ln_pre", f"{vision}/pre_layrnorm", "layernorm"),
        Rule(rf"{p}visual\.ln_post", f"{vision}/post_layernorm", "layernorm"),
        Rule(rf"{p}visual\.proj", "clip/visual_projection/kernel", "param"),
        Rule(rf"{p}token_embedding", f"{text}/embeddings/token_embedding", "embedding"),
        Rule(rf"{p}positional_embedding", f"{text}/embeddings/position_embedding/embedding",
             "param"),
        Rule(rf"{p}ln_final", f"{text}/final_layer_norm", "layernorm"),
        Rule(rf"{p}text_projection", "clip/text_projection/kernel", "param"),
        Rule(rf"{p}logit_scale", "clip/logit_scale", "param"),
    ]


def _rename_mix(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reproduction's Q_inter ([R] `--our_model`) by shape, not by its module names.

    `queries2special_vertial_proj` and `queries2special_horizontal_proj` are the 2x2 mixing
    Linear(2, 2) and the shared Linear(D, W); which name is which is not recorded in our
    reference, the weight shapes are unambiguous.
    """
    out = {}
    for key, value in state.items():
        old = next((f"transformer.queries2special_{n}_proj." for n in ("vertial", "horizontal")
                    if key.startswith(f"transformer.queries2special_{n}_proj.")), None)
        if old is None:
            out[key] = value
            continue
        weight = state[old + "weight"]
        new = "transformer.q_inter_mix." if weight.shape == (2, 2) else "transformer.q_inter_proj."
        out[new + key[len(old):]] = value
    return out


def import_hoiclip(state: Mapping[str, np.ndarray], target, clip_prefix: str = "clip_model."):
    """Maps a HOICLIP state dict onto our params.

    Args:
      state: `checkpoint['model']` (numpy arrays; CLIP may be float16).
      target: our params tree (arrays or ShapeDtypeStructs; only shapes/dtypes are read).
      clip_prefix: where the OpenAI CLIP keys live in `state`.

    Returns:
      (flat: {our '/'-joined param path: array}, report: mapping.ImportReport).

    Raises:
      ValueError: a shape differs (the message names the checkpoint key, our param, both shapes).
    """
    rules = DETR_RULES + HOICLIP_RULES + clip_rules(clip_prefix)
    return mapping.convert(_rename_mix(state), rules, DETR_IGNORES + HOICLIP_IGNORES,
                           mapping.flat_shapes(target))


def load_hoiclip(path: str, params, clip_prefix: str = "clip_model."):
    """Reads a released HOICLIP `.pth`; returns (params with its weights, report).

    `params` (e.g. from `classifiers.init_params`) is not modified; its leaves that the checkpoint
    does not hold stay as they are (listed in `report.left_at_init`).
    """
    state, _ = torch_pickle.load_state_dict(path)
    flat, report = import_hoiclip(state, params, clip_prefix)
    return mapping.merge(params, flat), report
