r"""Device memory and FLOPs of the compiled training step, from XLA's own analyses.

    python -m benchmarks.memory --config configs/hico.py                  # the README table
    python -m benchmarks.memory --config configs/hico.py --rows 1333x1333:float32:none:1

Nothing is initialised or run: the step is lowered for the shapes of the train state
(`state_io.build_abstract_state`) and of one batch, compiled for the default backend, and
`compiled.memory_analysis()` / `compiled.cost_analysis()` are read. A row is
`HxW:dtype:remat:microbatches` at `--per-device` images per device (default 8, the paper's
batch); the default rows are the full canvas (1333x1333) and the largest training bucket
(1216x1216) in float32 and bfloat16, with and without remat (`nothing_saveable`) and 4
microbatches (the bucket: the plain step and the smallest setting only).

Columns: arguments (state + batch), temporaries (activations kept for the backward pass and
scratch), outputs not aliased to a donated argument, and their sum, the step's device memory.
On the CPU backend these are XLA:CPU's buffer assignment, which fuses and schedules somewhat
differently from XLA:GPU; `benchmarks/accelerator.sh` prints the same analysis on a GPU.
FLOPs are XLA's count for the whole step (forward, backward, optimizer), divided by the batch.
XLA counts the body of a loop once, so a microbatched step's count is multiplied by the number of
microbatches (which also counts the small optimizer update that many times).
"""
import dataclasses

import jax

from benchmarks import train_step as bench
from hoiclip_jax.lib import checkpoints, cli, sharding
from hoiclip_jax.train import matching, state as state_io, step as train_step

DEFAULT_ROWS = tuple(
        [f"1333x1333:{dtype}:{remat}:{micro}" for dtype in ("float32", "bfloat16")
         for remat, micro in (("none", 1), ("nothing_saveable", 1), ("none", 4),
                              ("nothing_saveable", 4))]
        + [f"1216x1216:{dtype}:{remat}:{micro}" for dtype in ("float32", "bfloat16")
           for remat, micro in (("none", 1), ("nothing_saveable", 4))])


@dataclasses.dataclass(frozen=True)
class StepCost:
    image: tuple[int, int]
    dtype: str
    remat: str
    microbatches: int
    batch: int
    argument_bytes: int
    temp_bytes: int
    output_bytes: int      # outputs not aliased to donated arguments
    flops: float

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes


def parse_row(text: str) -> tuple[tuple[int, int], str, str, int]:
    size, dtype, remat, micro = text.split(":")
    h, w = (int(v) for v in size.split("x"))
    return (h, w), dtype, remat, int(micro)


def _abstract_batch(config, tables, batch_size: int, mesh) -> dict:
    example = bench.random_batch(config, tables, 2)
    sharding_ = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype, sharding=sharding_)
            for k, v in example.items()}


def step_cost(config, row: str, per_device: int) -> StepCost:
    """Compiles the train step of one row on all devices and reads XLA's analyses."""
    from data_pipeline import class_tables
    image, dtype, remat, micro = parse_row(row)
    config = config.copy_and_resolve_references()
    bench.set_image_size(config, image)
    config.model.dtype, config.model.remat, config.train.microbatches = dtype, remat, micro
    tables = class_tables.load_class_tables(config.dataset)
    mesh = sharding.make_mesh()
    batch_size = per_device * mesh.size
    model, tx, _, state = state_io.build_abstract_state(config, tables, steps_per_epoch=1000)
    state = checkpoints.abstract_like(state, sharding.replicated(mesh))
    step_fn = train_step.make_train_step(model, tx, matching.build_matcher(config.matcher, mesh),
                                         config.loss, mesh, micro)
    compiled = step_fn.lower(state, _abstract_batch(config, tables, batch_size, mesh)).compile()
    memory = compiled.memory_analysis()
    return StepCost(image, dtype, remat, micro, batch_size,
                    int(memory.argument_size_in_bytes), int(memory.temp_size_in_bytes),
                    int(memory.output_size_in_bytes - memory.alias_size_in_bytes),
                    bench.compiled_flops(compiled) * micro)


def format_rows(costs: list[StepCost]) -> str:
    gib = lambda b: f"{b / 2 ** 30:.2f}"
    lines = ["| image | dtype | remat | microbatches | batch / device | arguments GiB | "
             "temporaries GiB | outputs GiB | total GiB | GFLOP / image |",
             "|" + "---|" * 10]
    for c in costs:
        per_device = c.batch // max(jax.device_count(), 1)
        lines.append(f"| {c.image[0]}x{c.image[1]} | {c.dtype} | {c.remat} | {c.microbatches} | "
                     f"{per_device} | {gib(c.argument_bytes)} | {gib(c.temp_bytes)} | "
                     f"{gib(c.output_bytes)} | **{gib(c.total_bytes)}** | "
                     f"{c.flops / c.batch / 1e9:,.0f} |")
    return "\n".join(lines)


def main(argv) -> None:
    from absl import flags
    f = flags.FLAGS
    config = bench.config_from_flags(argv)
    rows = f.rows or DEFAULT_ROWS
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{jax.device_count()} device(s), {f['per-device'].value} images per device",
          flush=True)
    costs = []
    for row in rows:
        costs.append(step_cost(config, row, f["per-device"].value))
        print(format_rows(costs[-1:]).splitlines()[-1], flush=True)
    print(format_rows(costs))


if __name__ == "__main__":
    from absl import app, flags

    cli.define_config_flag()
    flags.DEFINE_list("rows", [], "HxW:dtype:remat:microbatches rows (default: the README's).")
    flags.DEFINE_integer("per-device", 8, "Images per device.")
    app.run(main)
