r"""Times the jitted training step on whatever backend is present.

    python benchmarks/train_step.py --config configs/demo.py
    python benchmarks/train_step.py --config configs/hico.py --image-size 320,320 --batch 2 \
        --steps 5
    python benchmarks/train_step.py --config configs/demo.py --config.model.dtype=bfloat16

Builds the model, the train state and the jitted step exactly as the trainer does
(`state_io.build_state`, `matching.build_matcher`, `train_step.make_train_step` on
`sharding.make_mesh()` over all devices), feeds one fixed random batch of the config's shapes
(`--image-size H,W` replaces `config.dataset.canvas`), and prints one table row: compile time,
step-time median and p10/p90, images/s, the host matcher's wall time per step and its share of
the step, and peak memory. Weights files never change the step's cost, so the config's
`model.clip.weights`, `model.pretrained`, `model.text_embeddings` and `model.verb_features` are
cleared (random init; the output says so). Column meanings: benchmarks/README.md.
"""
import dataclasses
import os
import resource
import sys
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from hoiclip_jax.lib import cli, host_memory, sharding
from hoiclip_jax.train import matching, state as state_io, step as train_step

_WEIGHT_FIELDS = ("clip.weights", "pretrained", "text_embeddings", "verb_features")


@dataclasses.dataclass(frozen=True)
class StepBenchmark:
    """What `measure` reports. Times in seconds, memory in bytes."""
    backend: str                 # jax.default_backend(): 'cpu', 'gpu', 'tpu'
    device_kind: str             # e.g. 'cpu', 'NVIDIA H100 80GB HBM3'
    num_devices: int             # devices of the ('data',) mesh
    dtype: str                   # config.model.dtype (activations; params are float32)
    batch_size: int              # global batch
    image_size: tuple[int, int]  # (H, W) canvas of the batch images
    init_s: float                # building the model and the step-0 state (host)
    compile_s: float             # lowering + XLA compilation of the step
    step_times_s: tuple[float, ...]   # each measured step, dispatch to results ready
    matcher_times_s: tuple[float, ...]  # per measured step: wall time inside the host matcher
    callbacks_per_step: float    # host matcher calls per step (one per device)
    peak_memory_bytes: int
    memory_source: str           # 'device peak_bytes_in_use' or 'host peak RSS'
    trainable_params: int
    total_params: int
    flops_per_step: float = float("nan")  # XLA's cost analysis of the compiled step

    @property
    def step_median_s(self) -> float:
        return float(np.median(self.step_times_s))

    @property
    def step_p10_s(self) -> float:
        return float(np.percentile(self.step_times_s, 10))

    @property
    def step_p90_s(self) -> float:
        return float(np.percentile(self.step_times_s, 90))

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.step_median_s

    @property
    def matcher_median_s(self) -> float:
        return float(np.median(self.matcher_times_s))

    @property
    def matcher_share(self) -> float:
        """Host-matcher wall time over step wall time, summed over the measured steps."""
        return float(np.sum(self.matcher_times_s) / np.sum(self.step_times_s))


def clear_weight_files(config) -> list[str]:
    """Sets the config's weight-file fields to '' (random init); returns one note per field."""
    notes = []
    for field in _WEIGHT_FIELDS:
        *parents, leaf = field.split(".")
        node = config.model
        for name in parents:
            node = node[name]
        if node[leaf]:
            notes.append(f"config.model.{field}={node[leaf]!r} -> '' (random init; weights do "
                         "not change the step's cost)")
            node[leaf] = ""
    return notes


def set_image_size(config, size: tuple[int, int]) -> None:
    """Makes every batch image (H, W) = `size`: the canvas and the longest-side cap."""
    config.dataset.canvas = tuple(int(s) for s in size)
    config.dataset.max_side = max(config.dataset.canvas)


def random_batch(config, tables, batch_size: int, seed: int = 0) -> dict:
    """A numpy batch in the contract of docs/design.md with random, valid content.

    Each image gets 1..min(M, 6) GT pairs (HICO-Det has ~2-3 per training image; more pairs
    only make the host assignment slower, so this errs on the slow side), boxes inside the
    image, one to three HOI labels per pair. The second image is padded on its right quarter.
    """
    rng = np.random.default_rng(seed)
    (h, w), c, m = config.dataset.canvas, config.dataset.clip_image_size, config.dataset.max_pairs
    n_pairs = rng.integers(1, min(m, 6) + 1, size=batch_size)
    pair_mask = np.arange(m)[None] < n_pairs[:, None]
    boxes = lambda: np.concatenate([rng.uniform(0.3, 0.7, (batch_size, m, 2)),
                                    rng.uniform(0.1, 0.5, (batch_size, m, 2))], -1)
    hoi_labels = np.zeros((batch_size, m, tables.num_hois), np.float32)
    for b, j in zip(*np.nonzero(pair_mask)):
        hoi_labels[b, j, rng.choice(tables.num_hois, size=rng.integers(1, 4))] = 1.0
    pixel_mask = np.ones((batch_size, h, w), bool)
    pixel_mask[1:2, :, w * 3 // 4:] = False
    return {
        "image": rng.normal(size=(batch_size, h, w, 3)).astype(np.float32),
        "pixel_mask": pixel_mask,
        "clip_image": rng.normal(size=(batch_size, c, c, 3)).astype(np.float32),
        "sub_boxes": (boxes() * pair_mask[..., None]).astype(np.float32),
        "obj_boxes": (boxes() * pair_mask[..., None]).astype(np.float32),
        "obj_labels": rng.integers(0, tables.num_objects, (batch_size, m)).astype(np.int32),
        "obj_exists": pair_mask.copy(),
        "hoi_labels": hoi_labels,
        "pair_mask": pair_mask,
        "image_id": np.arange(batch_size, dtype=np.int32),
        "orig_size": np.tile(np.array([[h, w]], np.int32), (batch_size, 1)),
    }


def peak_memory(devices) -> tuple[int, str]:
    """(bytes, source): the devices' peak allocation when the backend reports it (GPU, TPU),
    else this process's peak resident set size (CPU: device memory is host memory)."""
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except (NotImplementedError, RuntimeError):  # backends without allocator statistics
            stats = None
        peaks.append((stats or {}).get("peak_bytes_in_use"))
    if peaks and all(p is not None for p in peaks):
        return int(max(peaks)), "device peak_bytes_in_use"
    return host_peak_rss_bytes(), "host peak RSS"


def host_peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux's `VmHWM` starts afresh at `exec`, unlike
    `ru_maxrss`, which a process started by fork + exec inherits from its parent (a subprocess
    of a big process would report the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _union_seconds(intervals: Sequence[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of `intervals` clipped to [start, end] (callbacks of several devices
    may overlap; the share counts wall time during which at least one ran)."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total


def _timed_steps(compiled, state, batch, steps: int):
    """Runs `steps` steps one at a time; per step its wall time and the matcher's wall time."""
    intervals = []
    previous = matching.set_host_timer(lambda a, b: intervals.append((a, b)))
    step_times, matcher_times = [], []
    try:
        for _ in range(steps):
            intervals.clear()
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            end = time.perf_counter()
            step_times.append(end - start)
            matcher_times.append(_union_seconds(list(intervals), start, end))
            calls = len(intervals)
    finally:
        matching.set_host_timer(previous)
    return state, metrics, step_times, matcher_times, calls


def _build_state(config, tables):
    """The trainer's (model, tx, step-0 state); the epoch length only moves lr-drop steps."""
    model, tx, _, state = state_io.build_state(config, tables, steps_per_epoch=1000)
    return model, tx, state


@dataclasses.dataclass
class PreparedStep:
    """The trainer's compiled step for one config, with its step-0 state and a random batch."""
    config: object
    tables: object
    model: object
    mesh: object
    state: dict
    batch: dict
    compiled: Callable
    init_s: float
    compile_s: float
    trainable_params: int
    total_params: int

    @property
    def flops_per_step(self) -> float:
        """XLA's FLOP count of the compiled step (nan when it reports none)."""
        return compiled_flops(self.compiled)


def compiled_flops(compiled) -> float:
    """FLOPs of one call of a compiled function, from XLA's cost analysis (nan if absent)."""
    cost = compiled.cost_analysis() if compiled is not None else None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def prepare(config, batch_size: int, devices: Optional[Sequence] = None,
            build: Optional[Callable] = None, compiler_options: Optional[dict] = None,
            compile_step: bool = True) -> PreparedStep:
    """Builds state, batch and the ahead-of-time compiled step as `hoiclip_jax.train` does.

    Args:
      config: a full config (weights fields as wanted: see `clear_weight_files`).
      batch_size: global batch; must divide by the number of devices.
      devices: mesh devices (default: all).
      build: (config, tables) -> (model, tx, step-0 state); default `state_io.build_state`.
        Values do not change the step's cost; tests pass a faster builder.
      compiler_options: XLA options for compiling the step (tests: a faster CPU compile).
      compile_step: False leaves `compiled` None (an inference benchmark needs no train step).
    """
    from data_pipeline import class_tables

    mesh = sharding.make_mesh(devices)
    sharding.check_batch_size(batch_size, mesh)
    tables = class_tables.load_class_tables(config.dataset)
    start = time.perf_counter()
    model, tx, state = (build or _build_state)(config, tables)
    state = sharding.put_replicated(state, mesh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - start
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    trainable = count(state["trainable"])

    step_fn = train_step.make_train_step(model, tx, matching.build_matcher(config.matcher, mesh),
                                         config.loss, mesh, config.train.microbatches)
    batch = sharding.put_batch(random_batch(config, tables, batch_size), mesh)
    start = time.perf_counter()
    compiled = (step_fn.lower(state, batch).compile(compiler_options=compiler_options)
                if compile_step else None)
    compile_s = time.perf_counter() - start
    return PreparedStep(config, tables, model, mesh, state, batch, compiled, init_s, compile_s,
                        trainable, trainable + count(state["frozen"]))


def compile_inference(prepared: PreparedStep, tfe_k: Sequence[int] = ()):
    """(compiled, args): the evaluator's forward + top-k (`inference.make_predict_fn`) on the
    prepared batch, with the prepared state's parameters."""
    from hoiclip_jax.eval import inference
    from hoiclip_jax.train import optim
    state = prepared.state
    params = optim.merge_params(state["trainable"], state["frozen"])
    predict = inference.make_predict_fn(prepared.model, prepared.tables,
                                         prepared.config.eval.max_hois, prepared.mesh, tfe_k)
    args = (params, prepared.batch)
    return predict.lower(*args).compile(), args


def measure(config, batch_size: int, steps: int, warmup: int = 1,
            devices: Optional[Sequence] = None, build: Optional[Callable] = None,
            compiler_options: Optional[dict] = None) -> StepBenchmark:
    """Builds the trainer's step for `config` (`prepare`) and times it on one fixed random batch.

    Args: as `prepare`, plus `steps` measured steps after `warmup` untimed ones.

    Returns:
      StepBenchmark.
    """
    if steps < 1:
        raise ValueError(f"--steps={steps}: need at least one measured step")
    p = prepare(config, batch_size, devices, build, compiler_options)
    state = p.state
    for _ in range(warmup):
        state, metrics = p.compiled(state, p.batch)
    jax.block_until_ready(state)
    state, metrics, step_times, matcher_times, calls = _timed_steps(p.compiled, state, p.batch,
                                                                    steps)
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"the benchmarked step gave a non-finite loss {metrics['loss']}")
    return _result(p, batch_size, p.compile_s, step_times, matcher_times, calls, p.flops_per_step)


def _result(p: PreparedStep, batch_size: int, compile_s: float, step_times, matcher_times,
            calls: int, flops: float) -> StepBenchmark:
    """A StepBenchmark of the prepared config's measured calls (memory read now)."""
    memory, source = peak_memory(p.mesh.devices.flat)
    return StepBenchmark(
            backend=jax.default_backend(), device_kind=p.mesh.devices.flat[0].device_kind,
            num_devices=p.mesh.size, dtype=str(p.config.model.dtype), batch_size=batch_size,
            image_size=tuple(p.config.dataset.canvas), init_s=p.init_s, compile_s=compile_s,
            step_times_s=tuple(step_times), matcher_times_s=tuple(matcher_times),
            callbacks_per_step=float(calls), peak_memory_bytes=memory, memory_source=source,
            trainable_params=p.trainable_params, total_params=p.total_params,
            flops_per_step=flops)


def measure_inference(config, batch_size: int, steps: int, warmup: int = 1,
                      devices: Optional[Sequence] = None, build: Optional[Callable] = None
                      ) -> StepBenchmark:
    """Times the evaluator's forward + top-k (`compile_inference`) like `measure` the step
    (no matcher: its fields are zero)."""
    if steps < 1:
        raise ValueError(f"--steps={steps}: need at least one measured step")
    p = prepare(config, batch_size, devices, build, compile_step=False)
    start = time.perf_counter()
    compiled, args = compile_inference(p)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return _result(p, batch_size, compile_s, times, (0.0,) * steps, 0, compiled_flops(compiled))


COLUMNS = ("config", "backend (device)", "devices", "dtype", "batch", "image", "compile s",
           "step ms median (p10-p90)", "img/s", "matcher ms/step", "matcher share", "peak memory")


def table_row(name: str, r: StepBenchmark) -> list[str]:
    """The values of `COLUMNS` for one result."""
    ms = lambda s: f"{s * 1e3:,.0f}" if s >= 0.1 else f"{s * 1e3:.1f}"
    gib = r.peak_memory_bytes / 2 ** 30
    memory = f"{gib:.2f} GiB ({'device' if r.memory_source.startswith('device') else 'RSS'})"
    return [name, f"{r.backend} ({r.device_kind})", str(r.num_devices), r.dtype,
            str(r.batch_size), f"{r.image_size[0]}x{r.image_size[1]}", f"{r.compile_s:.1f}",
            f"{ms(r.step_median_s)} ({ms(r.step_p10_s)}-{ms(r.step_p90_s)})",
            f"{r.images_per_s:.2f}", f"{r.matcher_median_s * 1e3:.2f}",
            f"{100 * r.matcher_share:.2g} %", memory]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table of `COLUMNS` and `rows`."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe(r: StepBenchmark) -> str:
    """The numbers the table rounds or leaves out."""
    return (f"init {r.init_s:.1f} s; {len(r.step_times_s)} measured steps: "
            + ", ".join(f"{t * 1e3:.1f}" for t in r.step_times_s) + " ms; matcher "
            + ", ".join(f"{t * 1e3:.2f}" for t in r.matcher_times_s)
            + f" ms ({r.callbacks_per_step:g} host calls/step); params {r.trainable_params:,} "
            f"trainable / {r.total_params:,}; memory: {r.memory_source}; "
            f"{r.flops_per_step / r.batch_size / 1e9:,.1f} GFLOP per image (XLA cost analysis)")


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--image-size={text!r}: expected H,W (two positive integers)")
    return int(parts[0]), int(parts[1])


def config_from_flags(argv):
    """The start of every benchmark command line: no stray arguments, logging, then `--config`
    with its weight files cleared and, where the script defines `--image-size`, that size set;
    prints one `note:` line per change. Returns the config."""
    from absl import flags
    f = flags.FLAGS
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    cli.setup_logging()
    config = f.config
    notes = clear_weight_files(config)
    image_size = f["image-size"].value if "image-size" in f else ""
    if image_size:
        set_image_size(config, _parse_size(image_size))
        notes.append(f"image size {image_size} (config.dataset.canvas and max_side)")
    notes.append(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} "
                 "(hoiclip_jax/lib/host_memory.py)")
    for note in notes:
        print(f"note: {note}", flush=True)
    return config


def define_step_flags(steps: int, steps_help: str) -> None:
    """`--config`, `--batch`, `--image-size` and `--steps` (default `steps`)."""
    from absl import flags
    cli.define_config_flag()
    flags.DEFINE_integer("batch", 0, "Global batch (0: config.train.batch_size).")
    flags.DEFINE_string("image-size", "", "H,W of the batch images (default: the config's "
                        "canvas).")
    flags.DEFINE_integer("steps", steps, steps_help)


def main(argv) -> None:
    from absl import flags
    f = flags.FLAGS
    config = config_from_flags(argv)
    batch = f.batch or config.train.batch_size
    if f.inference:
        result = measure_inference(config, batch, f.steps, f.warmup)
    else:
        result = measure(config, batch, f.steps, f.warmup)
    name = os.path.splitext(os.path.basename(f["config"].config_filename))[0]
    name += " (inference)" if f.inference else ""
    print(format_table([table_row(name, result)]))
    print(describe(result))


if __name__ == "__main__":
    # As the trainer does (hoiclip_jax/lib/host_memory.py): the step runs with the malloc
    # settings that keep its buffers mapped between calls.
    host_memory.reexec_with_malloc_tunables()
    from absl import app, flags

    define_step_flags(10, "Measured steps.")
    flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
    flags.DEFINE_bool("inference", False, "Time the evaluator's forward + top-k (train=False) "
                      "instead of the training step.")
    app.run(main)
