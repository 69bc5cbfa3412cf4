"""HOICLIP zero-shot on HICO-Det (reference §1.6, §3.4, §8.3, §9.1).

    python -m hoiclip_jax.tools.verb_features --config configs/hico_zs.py:setting=rare_first \
        --method original --out params/verb_features/hico_rare_first_original.npy
    python -m hoiclip_jax.train --config configs/hico_zs.py:setting=rare_first \
        --workdir runs/hico_rf_uc
(E_v `verb_features=original` and the TFE k=10 row are the defaults, as for configs/hico.py.)
Published (HOICLIP README, Unseen / Seen / Full mAP):
    setting=rare_first      (RF-UC, 120 unseen)  25.53 / 34.85 / 32.99
    setting=non_rare_first  (NF-UC, 120 unseen)  26.39 / 28.10 / 27.75
    setting=unseen_object   (UO, 100 unseen)     16.20 / 30.99 / 28.53
    setting=unseen_verb     (UV, 84 unseen)      24.30 / 32.19 / 31.09

Training drops every pair that carries an unseen HOI (and the images left without pairs); the
HOI classifier and verb2hoi cover the 480 / 480 / 500 / 516 seen classes (ascending index
order), and so do the labels of the loss and the matcher. Every evaluation (during training
too) scores all 600 classes with the bias-free text classifier and the full verb2hoi, and
reports Unseen / Seen / Full. The object and HOI classifiers are built from all class names,
as in the reference (issue #15). The reference's per-epoch validation used the seen-only
classifier, whose column ids are not HOI ids (a bug not reproduced here).

E_v: the tool above, with this config, reads the training pairs left after the zero-shot
filter, so nothing of the unseen classes leaks into it. The reference's E_v saw the unseen
pairs too (issue #5). To reproduce that leak, make E_v with `--include-unseen` (which gives
configs/hico.py's E_v, params/verb_features/hico_original.npy) and pass that file as
`--config.model.verb_features=...` instead of the option.

Options: `setting=rare_first|non_rare_first|unseen_object|unseen_verb` (required) and
config_base.VARIANTS (`q_inter`, `verb_features`: params/verb_features/hico_<setting>_<method>.npy).
"""
from hoiclip_jax.lib import config_base

SETTINGS = ("rare_first", "non_rare_first", "unseen_object", "unseen_verb")


def get_config(arg=None):
    choices = {"setting": SETTINGS, **config_base.VARIANTS}
    args = config_base.parse_arg(arg, "configs/hico_zs.py", choices, required=("setting",))
    config = config_base.hoiclip_config("hico")
    config.dataset.zero_shot = args["setting"]  # config.model.zero_shot follows (a reference)
    config_base.apply_variants(config, args, f"hico_{args['setting']}")
    return config
