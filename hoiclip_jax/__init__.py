"""hoiclip-jax: HOICLIP in JAX/Flax.

`hoiclip_jax.load_checkpoint(path) -> (config, params)` and `hoiclip_jax.Predictor` are the
analysis API (hoiclip_jax/eval/loading.py, hoiclip_jax/eval/predictor.py; both also in
`hoiclip_jax.analysis`). They are imported on first use, so that `import hoiclip_jax` stays light
(no jax, flax or orbax import).

The package, each folder importing only the ones before it: `lib` (mesh, checkpoints, run log,
CLI, config files, box ops) -> `models` (Flax modules, no file IO) -> `weights` (all weight,
prompt and E_v IO, the initial params) -> `train` and `eval` -> `tools`. See docs/design.md.
"""
import importlib

__all__ = ["load_checkpoint", "Predictor", "analysis"]
_LAZY = {"load_checkpoint": "eval.loading", "Predictor": "eval.predictor"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "analysis":
        return importlib.import_module(f"{__name__}.analysis")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
