"""The analysis API under its documented name: `load_checkpoint` and `Predictor`
(hoiclip_jax/eval/analysis.py)."""
from hoiclip_jax.eval.analysis import Prediction, Predictor, Triplet, load_checkpoint

__all__ = ["load_checkpoint", "Predictor", "Prediction", "Triplet"]
