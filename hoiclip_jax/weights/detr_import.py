"""DETR-R50 (`detr-r50-e632da11.pth`) -> HOICLIP params, with the "2-branch" conversion (§4.3).

The reference converts the DETR checkpoint with a separate script and loads the result with
`strict=False`. Here `convert_2branch` is that script's key transformation, and `import_detr`
maps the converted keys onto our params, as the `strict=False` load does:
- filled: backbone (ResNet-50 + frozen BN), input_proj, the 6 encoder layers, instance decoder
  layers 0..dec_layers-1 and its final norm (from DETR decoder layers of the same index), and both
  box MLPs (`hum_bbox_embed`, `obj_bbox_embed`, from DETR's `bbox_embed`);
- ignored: DETR decoder layers >= dec_layers, the GEN-VLKT `interaction_decoder` copy (unused),
  `query_embed`, `class_embed`, `bbox_embed`, and the 81/82-row `obj_class_embed` (HOICLIP with
  CLIP object labels has none of them);
- left at init: everything else (queries, CLIP, the interaction decoder, the classifiers).

Layouts: PyTorch Linear [out, in] -> kernel [in, out]; Conv OIHW -> HWIO; MHA in_proj [3D, D] ->
q/k/v; FrozenBatchNorm2d weight/bias/running_mean/running_var -> scale/bias/mean/var.

The rules below use the HOICLIP (= converted) key names and are shared by `hoiclip_import`.
"""
from collections.abc import Mapping, Sequence

import numpy as np

from hoiclip_jax.weights import mapping, torch_pickle
from hoiclip_jax.weights.mapping import Ignore, Rule

_BODY = r"backbone\.0\.body"
_LAYER = rf"{_BODY}\.layer(\d)\.(\d+)"
_ENC = r"transformer\.encoder\.layers\.(\d+)"
_DEC = r"transformer\.instance_decoder\.layers\.(\d+)"

DETR_RULES = [
    Rule(rf"{_BODY}\.conv1", "backbone/stem/conv", "conv"),
    Rule(rf"{_BODY}\.bn1", "backbone/stem/bn", "frozen_bn"),
    Rule(rf"{_LAYER}\.conv(\d)", "backbone/layer{0}/block{1}/conv{2}", "conv"),
    Rule(rf"{_LAYER}\.bn(\d)", "backbone/layer{0}/block{1}/bn{2}", "frozen_bn"),
    Rule(rf"{_LAYER}\.downsample\.0", "backbone/layer{0}/block{1}/downsample_conv", "conv"),
    Rule(rf"{_LAYER}\.downsample\.1", "backbone/layer{0}/block{1}/downsample_bn", "frozen_bn"),
    Rule(r"input_proj", "input_proj", "conv"),
    Rule(rf"{_ENC}\.self_attn", "encoder/layer{0}/self_attn", "mha"),
    Rule(rf"{_ENC}\.(linear[12])", "encoder/layer{0}/{1}", "linear"),
    Rule(rf"{_ENC}\.(norm[12])", "encoder/layer{0}/{1}", "layernorm"),
    Rule(rf"{_DEC}\.(self_attn|multihead_attn)", "instance_decoder/layer{0}/{1}", "mha"),
    Rule(rf"{_DEC}\.(linear[12])", "instance_decoder/layer{0}/{1}", "linear"),
    Rule(rf"{_DEC}\.(norm[123])", "instance_decoder/layer{0}/{1}", "layernorm"),
    Rule(r"transformer\.instance_decoder\.norm", "instance_decoder/norm", "layernorm"),
    Rule(r"(hum|obj)_bbox_embed\.layers\.(\d)", "{0}_bbox_embed/layer{1}", "linear"),
]

DETR_IGNORES = [
    Ignore(r"transformer\.interaction_decoder\..*",
           "GEN-VLKT interaction decoder: built, never used by HOICLIP (§0)"),
    Ignore(r"query_embed\.weight",
           "HOICLIP uses query_embed_h/o + pos_guided_embedd instead (§1.3, §4.3)"),
    Ignore(r"(class_embed|bbox_embed|obj_class_embed)\.(weight|bias|layers\.\d\.(weight|bias))",
           "DETR head with no HOICLIP counterpart (CLIP object labels, §4.3)"),
]


def convert_2branch(detr: Mapping[str, np.ndarray], coco_ids: Sequence[int], num_queries: int,
                    extra_object_rows: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """The reference's DETR -> HOICLIP key conversion (§4.3), arrays shared, not copied.

    1. every key whose 2nd dot-part is 'decoder' -> `<first>.instance_decoder.<rest>` and
       `<first>.interaction_decoder.<rest>` (the original is dropped);
    2. `bbox_embed.*` also copied to `hum_bbox_embed.*` and `obj_bbox_embed.*`;
    3. `obj_class_embed.*` = rows `coco_ids + [no-object]` of `class_embed.*` (81 for HICO); with
       `extra_object_rows` (1 for V-COCO) default-initialised nn.Linear(D, 1) rows are inserted
       before the no-object row;
    4. `query_embed.weight` keeps its first `num_queries` rows.

    Args:
      detr: the DETR state dict (`checkpoint['model']`).
      coco_ids: COCO category id of each of our object classes (class tables' `coco_ids`).
      num_queries: queries per branch (config.model.num_queries).
      extra_object_rows: object classes beyond the COCO ones (tables.num_objects - 80).
      seed: of the random extra rows.

    Returns:
      the converted state dict (HOICLIP key names).
    """
    rng = np.random.default_rng(seed)
    # nn.Linear(D, 1) default init of the extra rows: weight and bias U(+-1/sqrt(D)).
    fan_in = detr["class_embed.weight"].shape[1] if "class_embed.weight" in detr else 1
    out = {}
    for key, value in detr.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[1] == "decoder":
            rest = ".".join(parts[2:])
            out[f"{parts[0]}.instance_decoder.{rest}"] = value
            out[f"{parts[0]}.interaction_decoder.{rest}"] = value
            continue
        out[key] = value
        if key.startswith("bbox_embed."):
            out["hum_" + key] = out["obj_" + key] = value
        elif key.startswith("class_embed."):
            out["obj_" + key] = _object_rows(key, value, coco_ids, extra_object_rows, rng,
                                             fan_in)
        elif key == "query_embed.weight":
            if value.shape[0] < num_queries:
                raise ValueError(f"query_embed.weight has {value.shape[0]} rows, "
                                 f"config.model.num_queries={num_queries}")
            out[key] = value[:num_queries]
    return out


def _object_rows(key, value, coco_ids, extra_rows: int, rng, fan_in: int) -> np.ndarray:
    """class_embed rows of our objects, then `extra_rows` random rows, then no-object."""
    no_object = value.shape[0] - 1
    if max(coco_ids) >= no_object:
        raise ValueError(f"{key} has {value.shape[0]} rows; COCO id {max(coco_ids)} out of range")
    rows = value[list(coco_ids)]
    bound = 1.0 / np.sqrt(fan_in)
    extra = rng.uniform(-bound, bound, (extra_rows,) + value.shape[1:]).astype(value.dtype)
    return np.concatenate([rows, extra, value[no_object:]])


def import_detr(detr: Mapping[str, np.ndarray], target, coco_ids: Sequence[int],
                num_queries: int, extra_object_rows: int = 0):
    """Converts (§4.3) and maps a DETR state dict onto our params.

    Args:
      detr: DETR state dict (numpy arrays).
      target: our params tree (arrays or ShapeDtypeStructs; only shapes/dtypes are read).
      coco_ids, num_queries, extra_object_rows: see `convert_2branch`.

    Returns:
      (flat: {our '/'-joined param path: array}, report: mapping.ImportReport).
    """
    converted = convert_2branch(detr, coco_ids, num_queries, extra_object_rows)
    flat, report = mapping.convert(converted, DETR_RULES, DETR_IGNORES,
                                   mapping.flat_shapes(target))
    # Report the DETR key each param came from (the ignored keys keep their converted names).
    report.filled = {path: _detr_key(key) for path, key in report.filled.items()}
    return flat, report


def _detr_key(converted: str) -> str:
    """The DETR key that `convert_2branch` copied to `converted`."""
    for branch in (".instance_decoder.", ".interaction_decoder."):
        converted = converted.replace(branch, ".decoder.", 1)
    for prefix in ("hum_", "obj_"):
        if converted.startswith(prefix + "bbox_embed.") or converted.startswith(prefix + "class_"):
            return converted[len(prefix):]
    return converted


def load_detr(path: str, params, model_config, tables):
    """Reads a DETR `.pth` and returns (params with the DETR weights filled in, report).

    Args:
      path: e.g. `detr-r50-e632da11.pth` (zip or legacy format; `{'model': ...}` or bare).
      params: our params tree (e.g. from `classifiers.init_params`); not modified.
      model_config: config.model (num_queries).
      tables: class tables (coco_ids, num_objects).
    """
    state, _ = torch_pickle.load_state_dict(path)
    flat, report = import_detr(state, params, tables.coco_ids, model_config.num_queries,
                               tables.num_objects - len(tables.coco_ids))
    return mapping.merge(params, flat), report
