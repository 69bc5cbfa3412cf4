"""The files a run needs besides the images and annotations, checked before any work starts.

A missing one stops the run with an error that names the file and how to make or get it,
unless `config.allow_stand_ins` is True; then the documented stand-in is used and logged:

    E_v (config.model.verb_features)     stand-in: the text E_v (mean HOI prompt embedding
                                         per verb, `weights.verb_features.verb_embeddings`)
    the authors' fractional subset       stand-in: a deterministic sample of trainval_hico.json
      (annotations/trainval_hico_{p}%.json)           (`splits.sample_fraction`, logged)
    annotations/corre_vcoco.npy (V-COCO)  stand-in: the verb-object validity of the HOI table
                                         (`eval.scoring.vcoco_correct_mat`)
"""
import logging
import os

from data_pipeline import splits

VERB_FEATURES_COMMAND = ("python -m hoiclip_jax.tools.verb_features --config <this config> "
                         "--method {method} --out {path}")


class MissingFileError(FileNotFoundError):
    """A required file is missing and `config.allow_stand_ins` is False."""


def resolve(config):
    """`config`, or a copy whose missing-file fields point at the stand-ins when
    `config.allow_stand_ins` allows them (E_v: `model.verb_features = ''`).

    Raises:
      MissingFileError naming the file, the config field and how to make or get the file.
    """
    problems = [p for p in (_verb_features(config), _fraction(config), _vcoco_correct(config))
                if p]
    if not problems:
        return config
    if not config.allow_stand_ins:
        raise MissingFileError("\n".join(text for text, _ in problems) + "\n(or accept the "
                               "stand-ins with --config.allow_stand_ins=True)")
    config = config.copy_and_resolve_references()
    for text, apply in problems:
        logging.warning("%s\nconfig.allow_stand_ins=True: using the stand-in.", text)
        apply(config)
    return config


def _verb_features(config):
    path = config.model.verb_features
    if not path or os.path.isfile(path):
        return None
    method = os.path.splitext(os.path.basename(path))[0].rsplit("_", 1)[-1]
    text = (f"E_v file {path} (config.model.verb_features) not found: make it with "
            f"`{VERB_FEATURES_COMMAND.format(method=method, path=path)}` (stand-in: the text "
            f"E_v, config verb_features=text)")

    def use_text(c):
        c.model.verb_features = ""
    return text, use_text


def _fraction(config):
    d = config.dataset
    if d.name != "hico" or d.builder != "tfds" or splits.fraction_of(d.train_file) == 100:
        return None
    path = os.path.join(d.root, "annotations", d.train_file)
    if os.path.isfile(path):
        return None
    text = (f"fractional training file {path} not found: it is the HOICLIP authors' subset "
            f"(released with their annotations, README 'Quick start'); no command can remake it "
            f"(stand-in: a deterministic {splits.fraction_of(d.train_file)} % sample of "
            f"{splits.FULL_TRAIN_FILE}, not the authors' images)")
    return text, lambda c: None  # the tfds builder samples when the file is absent


def _vcoco_correct(config):
    d = config.dataset
    if d.name != "vcoco":
        return None
    path = os.path.join(d.root, "annotations", "corre_vcoco.npy")
    if os.path.isfile(path):
        return None
    text = (f"verb-object validity {path} not found: it comes with the GEN-VLKT / HOICLIP V-COCO "
            f"annotations (README 'Quick start') (stand-in: the validity of the HOI table)")
    return text, lambda c: None  # the V-COCO scorer builds the stand-in when the file is absent
