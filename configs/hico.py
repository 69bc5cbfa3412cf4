"""HOICLIP on full HICO-Det (reference §1.1, §4): ResNet-50 + ViT-B/32, 64 queries, 90 epochs.

    python -m hoiclip_jax.tools.verb_features --config configs/hico.py --method original \
        --out params/verb_features/hico_original.npy
    python -m hoiclip_jax.train --config configs/hico.py --workdir runs/hico
    python -m hoiclip_jax.evaluate --config configs/hico.py --workdir runs/hico \
        --checkpoint best --protocol official
Published (HOICLIP README, official protocol, TFE k=10): Default 34.69 Full / 31.12 Rare /
35.74 Non-rare; Known-Object 37.61 / 34.47 / 38.54.
Needs params/clip-vit-base-patch32/ and params/detr-r50-e632da11.pth (README "Weights").

Options (`--config configs/hico.py:key=value,...`, config_base.VARIANTS): `q_inter=mean|mix2x2`,
`verb_features=original|text|seed` (E_v from params/verb_features/hico_<method>.npy, made by
the first command with that `--method`; 'text' needs no file). The default is the published
recipe: `verb_features=original` (as the released tmp/verb.pth) and evaluation rows without and
with TFE k=10 (`config.eval.tfe_k`; `--config.eval.tfe_k='()'` for none).
"""
from hoiclip_jax.lib import config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, "configs/hico.py", config_base.VARIANTS)
    config = config_base.hoiclip_config("hico")
    config_base.apply_variants(config, args, "hico")
    return config
