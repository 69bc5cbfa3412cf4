"""Converts a DETR-R50 or released HOICLIP `.pth` into our params, without torch.

    python -m hoiclip_jax.tools.import_weights --config configs/hico.py \
        --detr params/detr-r50-e632da11.pth --out params/detr-r50-hico
    python -m hoiclip_jax.tools.import_weights --config configs/hico.py \
        --hoiclip checkpoint_best.pth --out params/hoiclip-hico

Writes `<out>/params.msgpack` (only the imported params, nested like our params tree; the rest
keeps its initialisation when `hoiclip_jax.weights.pretrained.load_pretrained` loads it) and
`<out>/import_report.txt`, and prints the report. The model is never initialised: the target
shapes come from `jax.eval_shape`.
"""
import argparse
import os

import flax.serialization
import flax.traverse_util as traverse_util

from hoiclip_jax.lib.config_files import load_config
from hoiclip_jax.weights import detr_import, hoiclip_import, torch_pickle


def import_file(config, detr: str | None, hoiclip: str | None):
    """(flat params {path: array}, ImportReport) of the given checkpoint for `config`'s model."""
    from data_pipeline.class_tables import load_class_tables
    from hoiclip_jax.models import hoiclip as hoiclip_model

    tables = load_class_tables(config.dataset)
    target = hoiclip_model.abstract_params(hoiclip_model.build_model(config.model, tables),
                                           config.dataset)
    state, _ = torch_pickle.load_state_dict(detr or hoiclip)
    if detr:
        return detr_import.import_detr(state, target, tables.coco_ids, config.model.num_queries,
                                       tables.num_objects - len(tables.coco_ids))
    return hoiclip_import.import_hoiclip(state, target)


def write(out: str, flat: dict, report) -> str:
    """Writes params.msgpack and import_report.txt into `out`; returns the msgpack path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "params.msgpack")
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(traverse_util.unflatten_dict(flat, sep="/")))
    with open(os.path.join(out, "import_report.txt"), "w") as f:
        f.write(report.summary() + "\n\nleft at init:\n" + "\n".join(report.left_at_init) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file, e.g. configs/hico.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--detr", help="DETR checkpoint, e.g. detr-r50-e632da11.pth")
    source.add_argument("--hoiclip", help="released HOICLIP checkpoint (.pth)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    flat, report = import_file(load_config(args.config), args.detr, args.hoiclip)
    path = write(args.out, flat, report)
    print(report.summary())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
