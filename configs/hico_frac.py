"""HOICLIP on a fraction of the HICO-Det training set (reference §4.2, §9.1).

    python -m hoiclip_jax.train --config configs/hico_frac.py:frac=25 --workdir runs/hico_frac25
Published (HOICLIP README, Default, Full / Rare / Non-rare; with TFE k=10 like the full row):
    frac=5   22.64 / 21.94 / 24.28        frac=25  28.44 / 25.47 / 30.52
    frac=15  27.07 / 24.59 / 29.38        frac=50  30.88 / 26.05 / 32.97
configs/hico5p.py is frac=5 under the design's name.

Trains on annotations/trainval_hico_<frac>%.json, the authors' subset (their Drive zip); when
the file is missing the run stops, naming it; with `--config.allow_stand_ins=True` a
deterministic sample of trainval_hico.json stands in, logged as not theirs
(data_pipeline/splits.py). The reference script passed `--frac 50%` to a float argument
and could not start; its rare / non-rare split comes from the subset file, as here (classes
absent from it count in Full only).

Options: `frac=5|15|25|50` (required) and config_base.VARIANTS (`q_inter`, `verb_features`). E_v
is read from params/verb_features/hico_<method>.npy, the full training set's (the reference
used its full-set tmp/verb.pth for every fraction); for an E_v of the subset only, run the
verb_features tool with this config and `--config.model.verb_features=<its .npy>`.
"""
from hoiclip_jax.lib import config_base


def get_config(arg=None):
    choices = {"frac": config_base.FRACTIONS, **config_base.VARIANTS}
    args = config_base.parse_arg(arg, "configs/hico_frac.py", choices, required=("frac",))
    return config_base.fractional_config(args.pop("frac"), args)
