"""HOICLIP on the 5 % subset of HICO-Det (reference §4.2, [R] scripts).

    python -m hoiclip_jax.train --config configs/hico5p.py --workdir runs/hico5p
Published (Default): 22.64 Full / 21.94 Rare / 24.28 Non-rare.
"""
from configs import common


def get_config():
    config = common.hoiclip_config("hico")
    config.dataset.train_file = "trainval_hico_5%.json"
    return config
