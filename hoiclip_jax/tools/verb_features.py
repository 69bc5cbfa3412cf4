"""Writes the verb class representation E_v (reference §5) for `config.model.verb_features`.

    python -m hoiclip_jax.tools.verb_features --config configs/hico.py \
        --clip params/clip-vit-base-patch32 --method original --out params/hico_verb.npy

Crops the human, object and union boxes of every HOI annotation of the training split (raw
images, GT boxes), embeds them with the CLIP image tower data-parallel over all devices, and
combines them by `--method`: 'original' (§5.1, the released `tmp/verb.pth`) or 'seed' (§5.2, the
reproduction report); see hoiclip_jax/weights/verb_features.py for the recipes and the
V-COCO no-object rule. The output is a float32 .npy [V, E], rows L2-normalised (zero for a verb
without training instances), which `config.model.verb_features` loads as it is.

CLIP: `--clip` (a Hugging Face CLIP folder) overrides `config.model.clip.weights`; its sizes
must equal `config.model.clip` (image_size may differ: the positions are resized, and the crops
are made at `config.model.clip.image_size`). With neither, the random CLIP that training
initialises for `config.seed` is used (the demo's frozen random CLIP; also for tests).

Zero-shot configs (`dataset.zero_shot` != 'none'): by default the training split after the
zero-shot filter is used, so unseen HOIs leak nothing into E_v. `--include-unseen` uses the whole
training file, as the reference did (issue Artanic30/HOICLIP#5, §3.4).

Runs on one process (every device of it): each process would otherwise crop every image.
"""
import argparse
import logging
import os

import jax
import numpy as np

from data_pipeline import sources
from data_pipeline.class_tables import load_class_tables
from hoiclip_jax.lib import sharding
from hoiclip_jax.weights import verb_features as ev
from hoiclip_jax.weights import clip as clip_weights
from hoiclip_jax.models import hoiclip
from hoiclip_jax.models.clip import CLIP
from hoiclip_jax.lib.config_files import load_config


def load_clip(config, tables, folder: str) -> tuple[CLIP, dict]:
    """(CLIP module, params) from the Hugging Face folder `folder`, or, when it is empty, the
    random CLIP of `init_params` for `config.seed` (the one a run without CLIP weights trains
    with)."""
    m = config.model
    if folder:
        spec, params, _ = clip_weights.load_clip_params(folder, m.clip.image_size)
        clip_weights.check_spec(spec, m.clip, folder)
        return CLIP(spec, float(params["logit_scale"])), params
    logging.warning("No CLIP weights (--clip and config.model.clip.weights are empty): E_v of "
                    "the random CLIP initialised for config.seed=%d", config.seed)
    model = hoiclip.build_model(m, tables)
    # The same draw as `hoiclip.random_params` (same rng, same init), but only the CLIP subtree
    # is kept, so XLA compiles and runs only its initialisers (-O0, as random_params).
    init = jax.jit(lambda rng: model.init(rng, *hoiclip.dummy_inputs(config.dataset),
                                          train=False)["params"]["clip"],
                   compiler_options={"xla_backend_optimization_level": 0})
    return CLIP(model.clip_spec, float(m.logit_scale_init)), init(jax.random.PRNGKey(config.seed))


def training_split(config, tables, include_unseen: bool) -> sources.HoiSplit:
    """The training records and images; with `include_unseen`, not zero-shot filtered."""
    dataset = config.dataset
    if include_unseen and dataset.zero_shot != "none":
        logging.warning("--include-unseen: E_v sees the unseen HOIs of zero-shot setting %r "
                        "(the reference's leak)", dataset.zero_shot)
        dataset = dataset.copy_and_resolve_references()
        dataset.zero_shot = "none"
    return sources.load_split(dataset, tables, "train")


def write_verb_features(config, clip_folder: str, method: str, out: str,
                        include_unseen: bool = False, batch_size: int = 256, threads: int = 4,
                        progress: bool = True) -> tuple[np.ndarray, ev.VerbSums]:
    """Computes E_v of `config`'s training split and saves it to `out` (.npy [V, E] float32).

    Args:
      config: the run config (dataset, class tables, model.clip sizes, seed).
      clip_folder: Hugging Face CLIP folder; '' means config.model.clip.weights.
      method: 'original' | 'seed'.
      out: the .npy to write (its folder is created).
      include_unseen: use the training pairs of unseen zero-shot classes too.
      batch_size: crops per CLIP call over all devices (rounded up to a multiple of them).
      threads: host threads decoding and cropping images.

    Returns:
      (E_v as written, the sums with image / instance counts).
    """
    ev.check_method(method)
    if not out.endswith(".npy"):
        raise ValueError(f"--out {out!r}: config.model.verb_features is read with np.load; "
                         "name a .npy file")
    tables = load_class_tables(config.dataset)
    split = training_split(config, tables, include_unseen)
    clip, params = load_clip(config, tables, clip_folder or config.model.clip.weights)
    encoder = ev.CropEncoder(clip, params, sharding.make_mesh(), batch_size)
    features, sums = ev.verb_features(split.records, split.images, tables, encoder, method,
                                      threads, progress)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.save(out, features)
    return features, sums


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file (configs/*.py)")
    parser.add_argument("--clip", default="",
                        help="Hugging Face CLIP folder (default: config.model.clip.weights)")
    parser.add_argument("--method", required=True, choices=ev.METHODS)
    parser.add_argument("--out", required=True, help="the .npy to write")
    parser.add_argument("--include-unseen", action="store_true",
                        help="zero-shot configs: use the unseen classes' training pairs too")
    parser.add_argument("--batch-size", type=int, default=256, help="crops per CLIP call")
    parser.add_argument("--threads", type=int, default=4, help="image decoding threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = load_config(args.config)
    features, sums = write_verb_features(config, args.clip, args.method, args.out,
                                         args.include_unseen, args.batch_size, args.threads)
    missing = int((sums.verb_count == 0).sum())
    print(f"{args.out}: E_v {features.shape} ({args.method}) from {sums.instances} HOI "
          f"instances in {sums.images} images on {jax.device_count()} devices; "
          f"{sums.skipped} instances skipped, {missing} verbs without instances (zero rows)")


if __name__ == "__main__":
    main()
