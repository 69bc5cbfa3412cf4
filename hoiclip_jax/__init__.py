"""hoiclip-jax: HOICLIP in JAX/Flax.

`hoiclip_jax.load_checkpoint(path) -> (config, params)` and `hoiclip_jax.analysis.Predictor`
are the analysis API (see hoiclip_jax/eval/analysis.py). They are imported on first use, so that
`import hoiclip_jax` stays light (no jax, flax or orbax import).
"""
import importlib

__all__ = ["load_checkpoint", "Predictor", "analysis"]
_LAZY = {"load_checkpoint": "analysis", "Predictor": "analysis"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "analysis":
        return importlib.import_module(f"{__name__}.analysis")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
