"""HOICLIP on V-COCO (reference §4.2 train_vcoco.sh): verb_weight 0.1, 29 verbs, 82 object logits.

    python -m hoiclip_jax.tools.verb_features --config configs/vcoco.py --method original \
        --out params/verb_features/vcoco_original.npy
    python -m hoiclip_jax.train --config configs/vcoco.py --workdir runs/vcoco \
        --config.model.vcoco_verb2hoi_bug=True
(`verb_features=original`, the E_v of the first command, is the default.)
Published (HOICLIP README): Scenario 1 63.50 / Scenario 2 64.81, from the python proxy
evaluator (`mAP_all`, `mAP_thesis`; which one is S1 or S2 is undocumented, §8.2) and the
reference's verb2hoi bug (`--config.model.vcoco_verb2hoi_bug=True` reproduces it).
Reproduction report (§9.3, batch 4): 58.76 / 59.31; TFE k=10 58.86 / 59.46
(`--config.eval.tfe_k='(10,)'`), k=20 58.87 / 59.45.

The reference script passed the HICO-Det E_v (117 rows) and crashed (issues #18, #24); here E_v
is the V-COCO one of the tool above. The released V-COCO E_v is not L2-normalised (row norms
0.4 to 20, §5.1); the tool's rows are.

Options: config_base.VARIANTS (`q_inter`, `verb_features`: params/verb_features/vcoco_<method>.npy).
"""
from hoiclip_jax.lib import config_base


def get_config(arg=None):
    args = config_base.parse_arg(arg, "configs/vcoco.py", config_base.VARIANTS)
    config = config_base.hoiclip_config("vcoco")
    config_base.apply_variants(config, args, "vcoco")
    return config
