r"""The training step on an accelerator: time, throughput, memory, matcher share and MFU.

    python -m benchmarks.accelerator --config configs/hico.py          # benchmarks/accelerator.sh

For the full-size config at `--per-device` images per device (default 8, the paper's batch) and
the training buckets' shapes, each row builds the trainer's step (`benchmarks/train_step.py`,
random weights) and prints compile time, median step time, images/s, the device's peak memory,
the host matcher's share of the step and the model FLOPs utilisation

    MFU = XLA's cost-analysis FLOPs of one step / median step time / (devices x peak FLOP/s)

with the dense peak of the device kind in `PEAK_TFLOPS` (float32 rows use the TF32 tensor-core
peak where JAX's default matmul precision runs float32 matmuls as TF32, i.e. on Ampere and newer).
A device kind missing from the table gets no MFU (`--peak-tflops` sets it). On the CPU it prints
the FLOPs per training image and no MFU.
"""
import dataclasses
import sys

import jax

from benchmarks import train_step as bench
from hoiclip_jax.lib import cli

# Dense peak TFLOP/s (no sparsity) from the vendors' datasheets: (bfloat16, float32 as run by
# JAX's default precision: TF32 tensor cores where the GPU has them, else plain FP32).
PEAK_TFLOPS = {
    "H200": (989.0, 494.0),
    "H100 80GB HBM3": (989.0, 494.0),   # SXM
    "H100 PCIe": (756.0, 378.0),
    "H100 NVL": (835.0, 418.0),
    "A100-SXM4-80GB": (312.0, 156.0),
    "A100-SXM4-40GB": (312.0, 156.0),
    "A100-PCIE-40GB": (312.0, 156.0),
    "A100 80GB PCIe": (312.0, 156.0),
    "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0),
    "RTX 4090": (165.0, 82.6),
    "RTX 3090": (71.0, 35.6),
    "V100-SXM2-16GB": (125.0, 15.7),    # no bfloat16 tensor cores: the FP16 peak
    "V100-SXM2-32GB": (125.0, 15.7),
    "Tesla T4": (65.0, 8.1),
}

DEFAULT_ROWS = ("1216x1216:float32:scipy", "1216x1216:float32:device",
                "1216x1216:bfloat16:scipy", "1216x1216:bfloat16:device",
                "800x1088:bfloat16:scipy")


def peak_tflops(device_kind: str, dtype: str):
    """The table's peak for a device kind (longest matching name), or None."""
    names = [n for n in PEAK_TFLOPS if n.lower() in device_kind.lower()]
    if not names:
        return None
    bf16, fp32 = PEAK_TFLOPS[max(names, key=len)]
    return bf16 if dtype == "bfloat16" else fp32


@dataclasses.dataclass(frozen=True)
class Row:
    image: tuple[int, int]
    dtype: str
    backend: str


def parse_row(text: str) -> Row:
    size, dtype, backend = text.split(":")
    h, w = (int(v) for v in size.split("x"))
    return Row((h, w), dtype, backend)


class CachedState:
    """`build` for `bench.measure` that initialises the train state once: the parameters do
    not depend on the rows' image size, dtype or matcher (a host copy, since each step donates
    its device copy); the model is rebuilt for each row's dtype."""

    def __init__(self):
        self.tx_state = None

    def __call__(self, config, tables):
        from hoiclip_jax.models import hoiclip
        if self.tx_state is None:
            _, tx, state = bench._build_state(config, tables)
            self.tx_state = tx, jax.device_get(state)
        return (hoiclip.build_model(config.model, tables),) + self.tx_state


def run_row(config, row: Row, per_device: int, steps: int, build: CachedState):
    config = config.copy_and_resolve_references()
    bench.set_image_size(config, row.image)
    config.model.dtype, config.matcher.backend = row.dtype, row.backend
    return bench.measure(config, per_device * jax.device_count(), steps, warmup=2, build=build)


def format_row(row: Row, r, peak) -> str:
    flops = r.flops_per_step
    mfu = (f"{100 * flops / r.step_median_s / (peak * 1e12 * r.num_devices):.1f} %"
           if peak else "n/a")
    gib = r.peak_memory_bytes / 2 ** 30
    return (f"| {row.image[0]}x{row.image[1]} | {row.dtype} | {row.backend} | {r.batch_size} | "
            f"{r.compile_s:.0f} | {r.step_median_s * 1e3:,.0f} | {r.images_per_s:.1f} | "
            f"{gib:.1f} ({'device' if r.memory_source.startswith('device') else 'RSS'}) | "
            f"{100 * r.matcher_share:.2g} % | {flops / r.batch_size / 1e9:,.0f} | {mfu} |")


HEADER = ("| image | dtype | matcher | batch | compile s | step ms | img/s | peak memory GiB | "
          "host matcher share | GFLOP / image | MFU |\n" + "|---" * 11 + "|")


def main(argv) -> None:
    from absl import flags
    f = flags.FLAGS
    config = bench.config_from_flags(argv)
    kind = jax.devices()[0].device_kind
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} x {kind}",
          flush=True)
    print(HEADER, flush=True)
    build = CachedState()
    for text in f.rows or DEFAULT_ROWS:
        row = parse_row(text)
        peak = f["peak-tflops"].value or peak_tflops(kind, row.dtype)
        if jax.default_backend() == "cpu":
            peak = None
        try:
            result = run_row(config, row, f["per-device"].value, f.steps, build)
        except Exception as error:  # one failing row (e.g. out of memory) must not hide the rest
            print(f"| {text} | failed: {type(error).__name__}: {str(error)[:200]} |", flush=True)
            continue
        print(format_row(row, result, peak), flush=True)
        print("  " + bench.describe(result), file=sys.stderr, flush=True)


if __name__ == "__main__":
    from absl import app, flags

    cli.define_config_flag()
    flags.DEFINE_list("rows", [], "HxW:dtype:matcher-backend rows (default: DEFAULT_ROWS).")
    flags.DEFINE_integer("per-device", 8, "Images per device.")
    flags.DEFINE_integer("steps", 10, "Measured steps per row.")
    flags.DEFINE_float("peak-tflops", 0.0, "Peak TFLOP/s of the device for the MFU (default: "
                       "the table).")
    app.run(main)
