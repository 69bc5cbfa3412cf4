"""Parameter counts of a config's HOICLIP, without allocating it.

    python -m hoiclip_jax.tools.param_count --config configs/hico.py

Builds the parameter shapes with `jax.eval_shape`, splits them into trainable / frozen with the
rules of `optim.parameter_groups(config)` (as the trainer does), and prints the totals and a
table per top-level module.
"""
import argparse

import flax.traverse_util as traverse_util
import numpy as np

from hoiclip_jax.lib.config_files import load_config
from hoiclip_jax.train import optim

def count_params(params, groups) -> dict:
    """Counts parameters per top-level module and trainable / frozen.

    Args:
      params: nested dict of arrays or jax.ShapeDtypeStruct.
      groups: config.optim.groups ((regex, group) pairs; group 'frozen' is not trained).

    Returns:
      {'total', 'trainable', 'frozen': int, 'modules': {name: (total, trainable, frozen)}}.
    """
    labels = traverse_util.flatten_dict(optim.label_params(params, groups))
    modules = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        size = int(np.prod(leaf.shape))
        frozen = labels[path] == optim.FROZEN
        total, trainable, n_frozen = modules.get(path[0], (0, 0, 0))
        modules[path[0]] = (total + size, trainable + (0 if frozen else size),
                            n_frozen + (size if frozen else 0))
    sums = np.sum(list(modules.values()), axis=0, dtype=np.int64)
    return {"total": int(sums[0]), "trainable": int(sums[1]), "frozen": int(sums[2]),
            "modules": modules}


def config_param_counts(config) -> dict:
    """`count_params` of the model that `config` builds (shapes only)."""
    from data_pipeline.class_tables import load_class_tables
    from hoiclip_jax.train import optim
    from hoiclip_jax.models import hoiclip

    tables = load_class_tables(config.dataset)
    model = hoiclip.build_model(config.model, tables)
    return count_params(hoiclip.abstract_params(model, config.dataset),
                        optim.parameter_groups(config))


def format_counts(counts: dict) -> str:
    """A plain-text table of `count_params` output."""
    lines = [f"{'module':<24}{'total':>14}{'trainable':>14}{'frozen':>14}"]
    for name, (total, trainable, frozen) in sorted(counts["modules"].items()):
        lines.append(f"{name:<24}{total:>14,}{trainable:>14,}{frozen:>14,}")
    lines.append(f"{'TOTAL':<24}{counts['total']:>14,}{counts['trainable']:>14,}"
                 f"{counts['frozen']:>14,}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file, e.g. configs/hico.py")
    args = parser.parse_args(argv)
    counts = config_param_counts(load_config(args.config))
    print(f"{args.config}: total {counts['total']:,}  trainable {counts['trainable']:,}  "
          f"frozen {counts['frozen']:,}")
    print(format_counts(counts))


if __name__ == "__main__":
    main()
