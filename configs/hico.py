"""HOICLIP on full HICO-Det (reference §1.1, §4): ResNet-50 + ViT-B/32, 64 queries, 90 epochs.

    python -m hoiclip_jax.tools.verb_features --config configs/hico.py --method original \
        --out params/verb_features/hico_original.npy
    python -m hoiclip_jax.train --config configs/hico.py:verb_features=original \
        --workdir runs/hico --config.eval.tfe_k='(10,)'
    python -m hoiclip_jax.evaluate --config configs/hico.py:verb_features=original \
        --workdir runs/hico --checkpoint best --protocol official --tfe_k 10
Published (HOICLIP README, official protocol, TFE k=10): Default 34.69 Full / 31.12 Rare /
35.74 Non-rare; Known-Object 37.61 / 34.47 / 38.54.
Needs params/clip-vit-base-patch32/ and params/detr-r50-e632da11.pth (README "Weights").

Options (`--config configs/hico.py:key=value,...`, common.VARIANTS): `q_inter=mean|mix2x2`,
`verb_features=text|original|seed` (E_v from params/verb_features/hico_<method>.npy, made by
the first command with that `--method`; 'text', the default, needs no file). The published
model is `verb_features=original` (the released tmp/verb.pth).
"""
from hoiclip_jax.lib import config_base as common


def get_config(arg=None):
    args = common.parse_arg(arg, "configs/hico.py", common.VARIANTS)
    config = common.hoiclip_config("hico")
    common.apply_variants(config, args, "hico")
    return config
