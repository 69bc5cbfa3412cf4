"""HOICLIP on the 5 % subset of HICO-Det (reference §4.2, [R] scripts): configs/hico_frac.py
with frac=5.

    python -m hoiclip_jax.train --config configs/hico5p.py --workdir runs/hico5p
Published (HOICLIP README, Default, TFE k=10, the released E_v: this config's defaults):
22.64 Full / 21.94 Rare / 24.28 Non-rare. Reproduction report (§9.3, batch 4),
Full / Rare / Non-rare without -> with TFE k=10:
    baseline                       20.35 / 19.33 / 22.78 -> 21.15 / 20.33 / 23.08
    :verb_features=seed  (var. 1)  20.09 / 18.96 / 22.79 -> 20.87 / 19.90 / 23.16
    :q_inter=mix2x2      (var. 2)  20.38 / 19.31 / 22.93 -> 21.21 / 20.31 / 23.34
(the report's baseline and variant 2 use the released E_v, i.e. `verb_features=original`).

Options: config_base.VARIANTS (`q_inter`, `verb_features`), as configs/hico_frac.py (both
build `config_base.fractional_config`).
"""
from hoiclip_jax.lib import config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, "configs/hico5p.py", config_base.VARIANTS)
    return config_base.fractional_config("5", args)
