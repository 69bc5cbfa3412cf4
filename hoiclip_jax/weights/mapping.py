"""PyTorch state dict -> our Flax params: name rules, layout changes, and a report of what matched.

A rule maps a PyTorch *module* (a regex on the key without its last part) to one of our module
paths (a template filled with the regex groups) and a module kind. The kind says how each PyTorch
leaf becomes our params (`LEAVES`):
- linear:     weight [out, in] -> kernel [in, out] (transposed); bias
- layernorm:  weight -> scale; bias
- conv:       weight OIHW -> kernel HWIO; bias
- frozen_bn:  weight -> scale, bias, running_mean -> mean, running_var -> var
- embedding:  weight -> embedding
- mha:        in_proj_weight [3D, D] -> q_proj/k_proj/v_proj kernels [D, D] (rows q, k, v, each
              transposed), in_proj_bias -> their biases, out_proj.{weight,bias} -> out_proj
- param:      the key itself is one param, copied as is (the regex matches the whole key)
Rules are tried in order; the first match wins. A key no rule maps, and that no `ignore` rule
explains, is reported as unmatched. Shapes must agree exactly (after the layout change).
"""
import dataclasses
import re
from collections.abc import Callable, Mapping

import flax.traverse_util as traverse_util
import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def _same(x):
    return x


def _transpose(x):
    return x.T


def _oihw_to_hwio(x):
    return x.transpose(2, 3, 1, 0)


def _qkv_piece(i: int, transform: Transform) -> Transform:
    """Piece i (q = 0, k = 1, v = 2) of a packed [3D, ...] in_proj tensor."""
    def piece(x):
        if x.shape[0] % 3:
            raise ValueError(f"packed in_proj of shape {x.shape}: first dim not divisible by 3")
        d = x.shape[0] // 3
        return transform(x[i * d:(i + 1) * d])
    return piece


def _qkv(leaf: str, transform: Transform) -> list[tuple[str, Transform]]:
    return [(f"{n}_proj/{leaf}", _qkv_piece(i, transform)) for i, n in enumerate("qkv")]


# kind -> PyTorch leaf -> [(our leaf path, transform)]; an empty list means "known, not used".
LEAVES: dict[str, dict[str, list[tuple[str, Transform]]]] = {
    "linear": {"weight": [("kernel", _transpose)], "bias": [("bias", _same)]},
    "layernorm": {"weight": [("scale", _same)], "bias": [("bias", _same)]},
    "conv": {"weight": [("kernel", _oihw_to_hwio)], "bias": [("bias", _same)]},
    "frozen_bn": {"weight": [("scale", _same)], "bias": [("bias", _same)],
                  "running_mean": [("mean", _same)], "running_var": [("var", _same)],
                  "num_batches_tracked": []},
    "embedding": {"weight": [("embedding", _same)]},
    "mha": {"in_proj_weight": _qkv("kernel", _transpose), "in_proj_bias": _qkv("bias", _same),
            "out_proj.weight": [("out_proj/kernel", _transpose)],
            "out_proj.bias": [("out_proj/bias", _same)]},
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """PyTorch module regex -> our module path template ('{1}' = regex group 1) and kind."""
    pattern: str
    target: str
    kind: str

    def match(self, key: str) -> list[tuple[str, Transform]] | None:
        """[(our param path, transform)] for `key`, or None when the rule does not apply."""
        if self.kind == "param":
            m = re.fullmatch(self.pattern, key)
            return None if m is None else [(self.target.format(*m.groups()), _same)]
        m = re.fullmatch(self.pattern + r"\.(.+)", key)
        if m is None:
            return None
        leaves = LEAVES[self.kind].get(m.groups()[-1])
        if leaves is None:
            return None
        module = self.target.format(*m.groups()[:-1])
        return [(f"{module}/{leaf}", fn) for leaf, fn in leaves]


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Checkpoint keys (regex on the whole key) that are known and deliberately not loaded."""
    pattern: str
    reason: str


@dataclasses.dataclass
class ImportReport:
    """What an import did.

    Attributes:
      filled: our param path -> checkpoint key it came from.
      left_at_init: our params that no checkpoint key filled (sorted).
      ignored: checkpoint key -> why it is not loaded (unused module, no counterpart here, or a
        layer our model does not have).
      unmatched: checkpoint keys that no rule knows (possibly a renamed or foreign checkpoint).
    """
    filled: dict[str, str]
    left_at_init: list[str]
    ignored: dict[str, str]
    unmatched: list[str]

    def summary(self) -> str:
        """Human-readable report, names grouped by module (layer indices collapsed to '*')."""
        lines = [f"filled {len(self.filled)} params; left at init {len(self.left_at_init)}; "
                 f"ignored {len(self.ignored)} checkpoint keys; unmatched {len(self.unmatched)}"]
        sections = [("left at init", {k: "" for k in self.left_at_init}, "/"),
                    ("ignored", self.ignored, "."),
                    ("unmatched", {k: "" for k in self.unmatched}, ".")]
        for title, notes, sep in sections:
            if notes:
                lines.append(f"{title}:")
                lines += [f"  {line}" for line in _group_lines(notes, sep)]
        return "\n".join(lines)


# Layer / block indices: whole numeric name parts and the digits of 'layer3', 'block12'.
_INDEX = re.compile(r"(?<=[./])\d+(?=[./]|$)|(?<=layer)\d+|(?<=block)\d+")


_LEAF_NAMES = {"kernel", "bias", "scale", "embedding", "mean", "var", "weight", "running_mean",
               "running_var", "num_batches_tracked", "in_proj_weight", "in_proj_bias"}


def module_of(name: str, sep: str) -> str:
    """The module a name belongs to, for reports: at most 2 levels, cut after the first index.

    'encoder/layer3/norm1/scale' -> 'encoder/layer*', 'clip/vision_model/encoder/...' ->
    'clip/vision_model', 'clip/logit_scale' -> 'clip/logit_scale', 'class_embed.bias' ->
    'class_embed'.
    """
    parts = _INDEX.sub("*", name).split(sep)
    if len(parts) > 1 and parts[-1] in _LEAF_NAMES:
        parts = parts[:-1]
    for i, part in enumerate(parts[:2]):
        if "*" in part:
            return sep.join(parts[:i + 1])
    return sep.join(parts[:2])


def _group_lines(notes: dict[str, str], sep: str) -> list[str]:
    """'module (N)  [note of its first member]' lines, in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for name in notes:
        groups.setdefault(module_of(name, sep), []).append(name)
    lines = []
    for module, members in groups.items():
        note = notes[members[0]]
        lines.append(f"{module} ({len(members)})" + (f"  [{note}]" if note else ""))
    return lines


def flat_shapes(params) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """'/'-joined param path -> (shape, dtype) of a params tree (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in flat.items()}


def convert(state_dict: Mapping[str, np.ndarray], rules: list[Rule], ignores: list[Ignore],
            target: Mapping[str, tuple[tuple[int, ...], np.dtype]]):
    """Maps a PyTorch state dict onto our param paths.

    Args:
      state_dict: PyTorch key -> array (any float dtype; cast to our param's dtype).
      rules, ignores: the name rules (first match wins; ignores are tried after the rules).
      target: our param path -> (shape, dtype), see `flat_shapes`.

    Returns:
      (flat: our param path -> numpy array, report: ImportReport).

    Raises:
      ValueError: converted arrays whose shapes differ from ours (every one listed, with both
        names and shapes: a checkpoint of another model or config), or two checkpoint keys
        filling the same param.
    """
    flat, filled, ignored, unmatched, mismatched = {}, {}, {}, [], []
    for key, value in state_dict.items():
        targets = _first_match(rules, key)
        if targets is None:
            reason = next((i.reason for i in ignores if re.fullmatch(i.pattern, key)), None)
            if reason is None:
                unmatched.append(key)
            else:
                ignored[key] = reason
            continue
        missing = [path for path, _ in targets if path not in target]
        if missing:
            # A layer or module our configuration does not build (e.g. DETR decoder layers 3-5).
            ignored[key] = f"no param {missing[0]} in this model"
            continue
        for path, transform in targets:
            if path in filled:
                raise ValueError(f"{path} is filled by both {filled[path]} and {key}")
            try:
                flat[path] = _converted(key, value, path, transform, target[path])
            except ValueError as e:  # listed together below
                mismatched.append(str(e))
                continue
            filled[path] = key
    if mismatched:
        raise ValueError(f"{len(mismatched)} checkpoint tensors do not fit this model (a "
                         f"checkpoint of another model or config?):\n  "
                         + "\n  ".join(_first(mismatched)))
    left = sorted(set(target) - set(flat))
    return flat, ImportReport(filled, left, ignored, unmatched)


def _first_match(rules, key):
    for rule in rules:
        targets = rule.match(key)
        if targets is not None:
            return targets
    return None


def _converted(key, value, path, transform, shape_dtype) -> np.ndarray:
    shape, dtype = shape_dtype
    try:
        array = transform(np.asarray(value))
    except ValueError as e:
        raise ValueError(f"checkpoint key {key} of shape {tuple(np.shape(value))} -> {path}: "
                         f"{e}") from e
    if tuple(array.shape) != shape:
        raise ValueError(f"shape mismatch: checkpoint key {key} has shape "
                         f"{tuple(np.shape(value))} (converted: {tuple(array.shape)}), our param "
                         f"{path} has shape {shape}")
    return np.asarray(array, dtype=dtype, order="C")


def merge(params, flat: Mapping[str, np.ndarray]):
    """A copy of the nested `params` with the leaves named in `flat` replaced.

    Raises:
      ValueError: paths of `flat` that are not in `params`, or whose shapes differ (all listed:
        e.g. a params file of another model or config).
    """
    tree = dict(traverse_util.flatten_dict(params, sep="/"))
    unknown = sorted(set(flat) - set(tree))
    wrong = [f"{path}: imported {tuple(np.shape(value))}, model {tuple(tree[path].shape)}"
             for path, value in sorted(flat.items())
             if path in tree and tuple(np.shape(value)) != tuple(tree[path].shape)]
    problems = ([f"not in the model ({len(unknown)}): " + ", ".join(_first(unknown))]
                if unknown else [])
    problems += [f"shapes differ ({len(wrong)}): " + "; ".join(_first(wrong))] if wrong else []
    if problems:
        raise ValueError("imported params do not fit this model (another model or config?):\n  "
                         + "\n  ".join(problems))
    tree.update(flat)
    return traverse_util.unflatten_dict(tree, sep="/")


def _first(names: list[str], n: int = 20) -> list[str]:
    """The first `n` of `names`, then a count of the rest (errors stay readable)."""
    return names[:n] + ([f"... {len(names) - n} more"] if len(names) > n else [])
