"""Pretrained CLIP from a Hugging Face model folder (issue 3), and cached prompt embeddings.

A folder such as `openai/clip-vit-base-patch32` holds `config.json` (-> `ClipSpec`) and the
weights as `flax_model.msgpack` (the Flax layout of clip.py: restored as-is) and/or
`model.safetensors` (the PyTorch layout: converted here, no torch needed). The conversion is
driven by our own parameter tree: each Flax path names one PyTorch key
(`a/b/kernel` <- `a.b.weight` transposed, `scale` and `embedding` <- `weight`), so every parameter
is accounted for; checkpoint keys that nothing reads are reported, a missing key or a shape
mismatch is an error naming the key.

Reference numerics: towers equal to transformers' CLIPModel at <= 1e-4 (tests/test_weights/clip.py
against the goldens of tools/goldens/make_clip_goldens.py).
"""
import dataclasses
import json
import logging
import os
from typing import Any, Optional

import flax.serialization
import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.models.clip import CLIP, ClipSpec, abstract_params

CONFIG_FILE = "config.json"
_LISTED = 20  # problems named in one error; the rest counted
FLAX_FILE = "flax_model.msgpack"
SAFETENSORS_FILE = "model.safetensors"
SOURCES = {"flax": FLAX_FILE, "safetensors": SAFETENSORS_FILE}

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults: a config.json may leave
# out any key that has its default value.
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5)
_PROJECTION_DIM_DEFAULT = 512
# What clip.py implements; anything else would load but compute something different.
_REQUIRED = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5)
# Non-trainable buffers of old PyTorch checkpoints (the arange of positions).
_DROPPED_SUFFIXES = ("position_ids",)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load did: the file read, checkpoint keys nothing read, buffers dropped."""
    path: str
    unused: tuple[str, ...]
    dropped: tuple[str, ...] = ()
    resized_grid: tuple[int, int] | None = None  # (checkpoint grid, new grid) side lengths


# ----------------------------------------------------------------------------- config.json


def read_spec(folder: str) -> ClipSpec:
    """`ClipSpec` of the HF folder's config.json.

    Raises:
      FileNotFoundError: no config.json.
      ValueError: an activation / LayerNorm eps / channel count that clip.py does not implement.
    """
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (expected a Hugging Face CLIP folder)")
    with open(path) as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: "
                             f"{e.msg}") from None
    text = _tower_config(raw, "text", _TEXT_DEFAULTS, path)
    vision = _tower_config(raw, "vision", _VISION_DEFAULTS, path)
    if vision["num_channels"] != 3:
        raise ValueError(f"{path}: vision_config.num_channels={vision['num_channels']}, "
                         "expected 3 (RGB)")
    projection = raw["projection_dim"] if "projection_dim" in raw else _PROJECTION_DIM_DEFAULT
    return ClipSpec(
            embed_dim=projection, image_size=vision["image_size"],
            patch_size=vision["patch_size"], vision_width=vision["hidden_size"],
            vision_layers=vision["num_hidden_layers"], vision_heads=vision["num_attention_heads"],
            vision_mlp_dim=vision["intermediate_size"],
            context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
            text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
            text_heads=text["num_attention_heads"], text_mlp_dim=text["intermediate_size"])


def _tower_config(raw: dict, tower: str, defaults: dict, path: str) -> dict:
    """Defaults, then `{tower}_config`, then the legacy `{tower}_config_dict` (which wins in HF)."""
    merged = dict(defaults)
    for key in (f"{tower}_config", f"{tower}_config_dict"):
        if raw.get(key):
            merged.update({k: v for k, v in raw[key].items() if k in defaults})
    for key, value in _REQUIRED.items():
        if merged[key] != value:
            raise ValueError(f"{path}: {tower}_config.{key}={merged[key]!r}, but the CLIP towers "
                             f"of hoiclip_jax implement only {value!r}")
    return merged


def check_spec(spec: ClipSpec, clip_config, folder: str) -> None:
    """Raises ValueError if config.model.clip disagrees with the checkpoint's sizes."""
    wrong = [f"config.model.clip.{f.name}={clip_config[f.name]} but {folder}/{CONFIG_FILE} "
             f"gives {getattr(spec, f.name)}" for f in dataclasses.fields(ClipSpec)
             if clip_config[f.name] != getattr(spec, f.name)]
    if wrong:
        raise ValueError("CLIP sizes differ from the weights: " + "; ".join(wrong))


# ----------------------------------------------------------------------------- weights


def weights_path(folder: str, source: str = "auto") -> str:
    """The weight file to read: 'flax', 'safetensors', or 'auto' (Flax first: no conversion)."""
    if source not in ("auto", *SOURCES):
        raise ValueError(f"weights source {source!r}: expected 'auto', 'flax' or 'safetensors'")
    names = [SOURCES[source]] if source != "auto" else [FLAX_FILE, SAFETENSORS_FILE]
    for name in names:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder}: none of {names} found (a Hugging Face CLIP folder, e.g. "
                            "openai/clip-vit-base-patch32, has them)")


def read_flax(path: str, target: dict) -> tuple[dict, LoadReport]:
    """flax_model.msgpack (`FlaxCLIPModel.save_pretrained`) checked against `target`'s tree."""
    with open(path, "rb") as f:
        tree = flax.serialization.msgpack_restore(f.read())
    if set(tree) == {"params"}:  # a {'params': ...} wrapper, as written by some tools
        tree = tree["params"]
    params, unused = _match(tree, target, path)
    return _unflatten(params), LoadReport(path, unused)


def read_safetensors(path: str, target: dict) -> tuple[dict, LoadReport]:
    """model.safetensors (PyTorch CLIPModel layout) converted to `target`'s Flax tree."""
    from safetensors.numpy import load_file
    return convert_pytorch(load_file(path), target, path)


def convert_pytorch(state_dict: dict, target: dict, source: str = "state dict"):
    """PyTorch CLIPModel state dict (numpy arrays) -> Flax params of `target`'s tree.

    Per Flax leaf: Linear `kernel` = `weight.T` ([out, in] -> [in, out]); the patch conv `kernel`
    = `weight` OIHW -> HWIO; LayerNorm `scale`, Embed `embedding` = `weight`; `bias`,
    `class_embedding` and `logit_scale` as they are. q/k/v/out_proj keep their names.

    Returns:
      (params, LoadReport): `unused` lists the keys nothing read; `position_ids` buffers are
      `dropped`.

    Raises:
      ValueError: keys the target needs are missing, or converted shapes differ (every one
        named, up to `_LISTED`).
    """
    params, problems = {}, []
    for key, shape in _flat_shapes(target).items():
        torch_key = _torch_key(key)
        if torch_key not in state_dict:
            problems.append(f"no '{torch_key}' for the Flax parameter '{key}'")
            continue
        value = _to_flax(key.rsplit("/", 1)[-1], np.asarray(state_dict[torch_key]))
        problem = _problem(value, shape, f"{torch_key} -> {key}")
        if problem:
            problems.append(problem)
        else:
            params[key] = value.astype(np.float32)
    _raise_problems(problems, source)
    read = {_torch_key(k) for k in params}
    dropped = sorted(k for k in state_dict if k.endswith(_DROPPED_SUFFIXES) and k not in read)
    unused = sorted(set(state_dict) - read - set(dropped))
    return _unflatten(params), LoadReport(source, tuple(unused), tuple(dropped))


def _torch_key(flax_key: str) -> str:
    *module, leaf = flax_key.split("/")
    if leaf in ("class_embedding", "logit_scale"):  # plain nn.Parameter: same name
        return ".".join(module + [leaf])
    return ".".join(module + ["bias" if leaf == "bias" else "weight"])


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # conv OIHW -> HWIO
    if leaf == "kernel":
        return value.T                      # Linear [out, in] -> [in, out]
    return value


def _flat_shapes(target: dict) -> dict[str, tuple]:
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(target).items()}


def _match(tree: dict, target: dict, source: str) -> tuple[dict, tuple[str, ...]]:
    """Flat float32 {path: array} of `tree`'s leaves that `target` has, and the other paths.

    Raises:
      ValueError: target leaves are missing, or shapes differ (every one named, up to
        `_LISTED`).
    """
    expected = _flat_shapes(target)
    params, unused, problems, seen = {}, [], [], set()
    for key, value in traverse_util.flatten_dict(tree).items():
        key = "/".join(key)
        if key not in expected:
            unused.append(key)
            continue
        seen.add(key)
        value = np.asarray(value)
        problem = _problem(value, expected[key], key)
        if problem:
            problems.append(problem)
        else:
            params[key] = value.astype(np.float32)
    missing = sorted(set(expected) - seen)
    if missing:
        problems.insert(0, f"{len(missing)} parameters missing, e.g. {missing[:5]}")
    _raise_problems(problems, source)
    return params, tuple(sorted(unused))


def _problem(value: np.ndarray, shape: tuple, key: str) -> Optional[str]:
    """Why `value` cannot be the parameter `key` of `shape`, or None."""
    if value.shape != shape:
        return f"'{key}' has shape {value.shape}, the model needs {shape}"
    if not np.issubdtype(value.dtype, np.floating):
        return f"'{key}' has dtype {value.dtype}, expected floating point"
    return None


def _raise_problems(problems: list[str], source: str) -> None:
    """One ValueError naming `source` and every problem (the first `_LISTED`)."""
    if not problems:
        return
    more = f"; ... {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
    raise ValueError(f"{source}: {len(problems)} problem(s): " + "; ".join(problems[:_LISTED])
                     + more)


def _unflatten(flat: dict) -> dict:
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


# ----------------------------------------------------------------------------- positions


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] weights of PyTorch's bicubic resize (align_corners=False, A = -0.75, edges
    clamped), as `interpolate_pos_encoding` of transformers' CLIP uses; no antialiasing."""
    a = -0.75
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a      # 1 < |x| < 2
    matrix = np.zeros((out_size, in_size))
    for o in range(out_size):
        src = (o + 0.5) * in_size / out_size - 0.5
        base = int(np.floor(src))
        t = src - base
        for offset, w in zip((-1, 0, 1, 2), (far(t + 1), near(t), near(1 - t), far(2 - t))):
            matrix[o, min(max(base + offset, 0), in_size - 1)] += w
    return matrix


def resize_positions(embedding: np.ndarray, grid: int) -> np.ndarray:
    """[1 + g*g, W] CLS + patch positions -> [1 + grid*grid, W]; the CLS position is kept."""
    old = int(round((embedding.shape[0] - 1) ** 0.5))
    if old * old != embedding.shape[0] - 1:
        raise ValueError(f"{embedding.shape[0] - 1} patch positions are not a square grid")
    patches = embedding[1:].reshape(old, old, -1).astype(np.float64)
    m = bicubic_matrix(old, grid)
    resized = np.einsum("oi,ijc,pj->opc", m, patches, m).reshape(grid * grid, -1)
    return np.concatenate([embedding[:1], resized.astype(embedding.dtype)])


def _resize_to(params: dict, spec: ClipSpec, image_size: int, path: str):
    if image_size % spec.patch_size:
        raise ValueError(f"{path}: image size {image_size} is not a multiple of the patch size "
                         f"{spec.patch_size}")
    emb = params["vision_model"]["embeddings"]["position_embedding"]
    grid = image_size // spec.patch_size
    old_grid = spec.image_size // spec.patch_size
    emb["embedding"] = resize_positions(emb["embedding"], grid)
    return dataclasses.replace(spec, image_size=image_size), (old_grid, grid)


# ----------------------------------------------------------------------------- entry points


def load_clip_params(folder: str, image_size: int | None = None, source: str = "auto"):
    """Reads a Hugging Face CLIP folder.

    Args:
      folder: config.json + flax_model.msgpack and/or model.safetensors.
      image_size: build for this input size (positions resized); None: the checkpoint's.
      source: 'auto' | 'flax' | 'safetensors' (see `weights_path`).

    Returns:
      (spec, params, report): ClipSpec (image_size as built), float32 jnp params in the Hugging
      Face Flax layout, LoadReport. Unused checkpoint keys are also logged as a warning.
    """
    spec = read_spec(folder)
    path = weights_path(folder, source)
    reader = read_flax if path.endswith(FLAX_FILE) else read_safetensors
    params, report = reader(path, abstract_params(spec))
    if report.unused:
        logging.warning("%s: %d keys not used by the CLIP towers: %s", path, len(report.unused),
                        ", ".join(report.unused))
    if image_size is not None and image_size != spec.image_size:
        spec, grids = _resize_to(params, spec, image_size, path)
        report = dataclasses.replace(report, resized_grid=grids)
    return spec, jax.tree.map(jnp.asarray, params), report


def params_for_config(clip_config, reference: dict) -> dict:
    """params['clip'] of HOICLIP from the folder config.model.clip.weights.

    Args:
      clip_config: config.model.clip; every ClipSpec field must equal the checkpoint's, except
        image_size, for which the positions are resized.
      reference: the model's (random) CLIP params, whose tree, shapes and dtypes are required.
    """
    folder = clip_config.weights
    spec, params, report = load_clip_params(folder, clip_config.image_size)
    check_spec(spec, clip_config, folder)
    flat, extra = _match(params, reference, report.path)
    if extra:
        raise ValueError(f"{report.path}: parameters the model does not have: {list(extra)}")
    return jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), _unflatten(flat),
                        reference)


# ----------------------------------------------------------------------------- prompt cache


def load_pretrained(path: str, image_size: int | None = None, source: str = "auto",
                    dtype: Any = jnp.float32):
    """CLIP from a Hugging Face model folder.

        model, params = load_pretrained("weights/clip-vit-base-patch32")
        embeds, tokens = model.apply({"params": params}, pixels, method="encode_image")

    Args:
      path: folder with config.json and flax_model.msgpack and/or model.safetensors.
      image_size: input size to build the model for; when it differs from the checkpoint's, the
        patch-position grid is resized bicubically (CLS position kept). None: the checkpoint's.
      source: 'auto' (Flax file if present, else safetensors), 'flax' or 'safetensors'.
      dtype: computation dtype of the returned module (params stay float32).

    Returns:
      (CLIP module, params): params in the Hugging Face Flax layout, float32.
    """
    spec, params, _ = load_clip_params(path, image_size, source)
    logit_scale = float(params["logit_scale"])
    return CLIP(spec, logit_scale, dtype), params
