r"""hoiclip-jax and the PyTorch proxy timed in turns, call by call, on one machine.

    python -m benchmarks.side_by_side --config configs/hico.py --batch 2 --image-size 512,512 \
        --torch-python /tmp/torch-venv/bin/python --steps 10

The speed of the project's 2-core machine drifts by tens of percent within minutes (other
tenants of its host), so two programs timed one after the other can differ by more than what
separates them. Here both stay loaded: the PyTorch proxy (`benchmarks/torch_proxy_step.py
--serve`, in a subprocess of `--torch-python`) and hoiclip-jax's step and evaluation forward
(built as `benchmarks/train_step.py` builds them, in this process), and they take turns one
call at a time, the first mover alternating every round. The waiting side is idle, so every
round compares the two under the same conditions; the table gives the medians of the times and
of the per-round ratios (ours / PyTorch's).

`--workloads=train` or `--workloads=inference` times one of them alone (each process then holds
only its program). Peak RSS: with both, this process holds the state, the compiled train step
and the compiled evaluation forward at once, above `train_step.py`'s figure for the step alone.
"""
import dataclasses
import os
import subprocess
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from benchmarks import train_step as bench
from hoiclip_jax.lib import host_memory

PROXY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_proxy_step.py")
WORKLOADS = ("train", "inference")


class TorchWorker:
    """A `torch_proxy_step.py --serve` subprocess: `call('train' | 'inference')` -> seconds."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None):
        self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, env=env)
        self.header = []
        for line in self.proc.stdout:
            if line.strip() == "ready":
                return
            self.header.append(line.rstrip())
        raise RuntimeError(f"{' '.join(command)} ended before it was ready (exit "
                           f"{self.proc.wait()}): " + "\n".join(self.header[-20:]))

    def _ask(self, command: str, answer: str) -> float:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != answer:
            raise RuntimeError(f"the PyTorch worker answered {line!r} to {command!r}")
        return float(line[1])

    def call(self, workload: str) -> float:
        return self._ask(workload, "ms") / 1e3

    def close(self) -> float:
        """Ends the worker; returns its peak RSS in GiB."""
        rss = self._ask("quit", "rss")
        self.proc.wait()
        return rss


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One workload's turns: seconds per call, ours[i] and theirs[i] from round i."""
    workload: str
    ours: tuple[float, ...]
    theirs: tuple[float, ...]

    @property
    def ratios(self) -> np.ndarray:
        return np.asarray(self.ours) / np.asarray(self.theirs)


def take_turns(ours: Callable[[], float], theirs: Callable[[], float], rounds: int
               ) -> tuple[list[float], list[float]]:
    """Calls both `rounds` times, theirs first in even rounds and ours first in odd ones."""
    mine, other = [], []
    for r in range(rounds):
        if r % 2 == 0:
            other.append(theirs())
            mine.append(ours())
        else:
            mine.append(ours())
            other.append(theirs())
    return mine, other


def _spread(values) -> str:
    """'median (p10-p90)' of seconds, in milliseconds."""
    ms = np.asarray(values) * 1e3
    return (f"{np.median(ms):,.0f} ({np.percentile(ms, 10):,.0f}-"
            f"{np.percentile(ms, 90):,.0f})")


def format_table(comparisons: Sequence[Comparison]) -> str:
    """Markdown: per workload, both programs' times and the per-round ratio."""
    lines = ["| workload | PyTorch proxy ms, median (p10-p90) | hoiclip-jax ms, median (p10-p90)"
             " | ours / proxy, median of rounds (p10-p90) | rounds |", "|---|---|---|---|---|"]
    for c in comparisons:
        r = c.ratios
        lines.append(f"| {c.workload} | {_spread(c.theirs)} | {_spread(c.ours)} | "
                     f"**{np.median(r):.2f}x** ({np.percentile(r, 10):.2f}-"
                     f"{np.percentile(r, 90):.2f}) | {len(r)} |")
    return "\n".join(lines)


def _timed(fn: Callable) -> Callable[[], float]:
    def call() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start
    return call


def jax_calls(config, batch_size: int, workloads: Sequence[str]
              ) -> dict[str, Callable[[], float]]:
    """{workload: timed call} of this project's train step and/or evaluation forward, each
    called once untimed (compilation and first-call work)."""
    prepared = bench.prepare(config, batch_size, compile_step="train" in workloads)
    calls = {}
    if "inference" in workloads:
        predict, (params, batch) = bench.compile_inference(prepared)
        # The train step donates the state's buffers: the forward keeps its own parameters.
        params = jax.tree.map(jax.numpy.copy, params)
        calls["inference"] = _timed(lambda: predict(params, batch))
    if "train" in workloads:
        holder = {"state": prepared.state}

        def train():
            holder["state"], metrics = prepared.compiled(holder["state"], prepared.batch)
            return holder["state"], metrics
        calls["train"] = _timed(train)
    for call in calls.values():
        call()
    return calls


def main(argv) -> None:
    from absl import flags
    f = flags.FLAGS
    config = bench.config_from_flags(argv)
    height, width = config.dataset.canvas
    if height != width:
        raise ValueError(f"--image-size={height},{width}: the PyTorch proxy takes square images")
    batch = f.batch or config.train.batch_size
    workloads = [w for w in WORKLOADS if w in f.workloads]
    if not workloads or len(workloads) != len(f.workloads):
        raise ValueError(f"--workloads={','.join(f.workloads)}: expected some of {WORKLOADS}")
    calls = jax_calls(config, batch, workloads)
    # The proxy runs with glibc's malloc defaults, as PyTorch users run it, unless asked.
    env = dict(os.environ)
    if not f["proxy-malloc-tunables"].value:
        env.pop("GLIBC_TUNABLES", None)
    worker = TorchWorker([f["torch-python"].value, PROXY, "--serve", ",".join(workloads),
                          "--batch", str(batch),
                          "--image-size", str(height), "--threads",
                          str(f["torch-threads"].value)], env)
    print("\n".join(worker.header))
    load_before = os.getloadavg()[0]
    comparisons = []
    for workload in workloads:
        ours, theirs = take_turns(calls[workload], lambda w=workload: worker.call(w), f.steps)
        comparisons.append(Comparison(workload, tuple(ours), tuple(theirs)))
    load_after = os.getloadavg()[0]
    torch_rss = worker.close()
    ours_rss = bench.host_peak_rss_bytes() / 2 ** 30
    print(format_table(comparisons))
    print(f"GLIBC_TUNABLES: ours {os.environ.get('GLIBC_TUNABLES', '')!r}, the proxy's "
          f"{env.get('GLIBC_TUNABLES', '')!r}")
    print(f"batch {batch}, {height}x{width}, {jax.default_backend()}; 1-minute load "
          f"{load_before:.2f} before, {load_after:.2f} after; peak RSS: PyTorch proxy "
          f"{torch_rss:.2f} GiB, this process ({' and '.join(workloads)}) {ours_rss:.2f} GiB")
    for c in comparisons:
        print(f"{c.workload}: ours " + ", ".join(f"{t * 1e3:.0f}" for t in c.ours)
              + " ms; proxy " + ", ".join(f"{t * 1e3:.0f}" for t in c.theirs) + " ms")


if __name__ == "__main__":
    # As the trainer does (hoiclip_jax/lib/host_memory.py): the step runs with the malloc
    # settings that keep its buffers mapped between calls.
    host_memory.reexec_with_malloc_tunables()
    from absl import app, flags

    bench.define_step_flags(10, "Rounds per workload: each round is one call of each program.")
    flags.DEFINE_list("workloads", list(WORKLOADS), "Which to time, in this order, each in its "
                      "own series of rounds (a process with only one compiles only that one).")
    flags.DEFINE_string("torch-python", None,
                        "Python interpreter with torch (and scipy) installed.")
    flags.DEFINE_integer("torch-threads", 2, "torch.set_num_threads of the proxy.")
    flags.DEFINE_bool("proxy-malloc-tunables", False, "Run the proxy with this project's glibc "
                      "malloc tunables too (hoiclip_jax/lib/host_memory.py).")
    flags.mark_flag_as_required("torch-python")
    app.run(main)
