"""The analysis API under its documented name: `load_checkpoint` (hoiclip_jax/eval/loading.py)
and `Predictor` (hoiclip_jax/eval/predictor.py)."""
from hoiclip_jax.eval.loading import load_checkpoint, locate_checkpoint
from hoiclip_jax.eval.predictor import Prediction, Predictor, Triplet, load_image

__all__ = ["load_checkpoint", "locate_checkpoint", "Predictor", "Prediction", "Triplet",
           "load_image"]
