"""HOICLIP on V-COCO (reference §4.2 train_vcoco.sh): verb_weight 0.1, 29 verbs, 82 object logits.

    python -m hoiclip_jax.train --config configs/vcoco.py --workdir runs/vcoco
Published: Scenario 1 63.50 / Scenario 2 64.81 (python proxy evaluator, reference §8.2).
"""
from configs import common


def get_config():
    return common.hoiclip_config("vcoco")
