r"""Where the training step's time goes: a jax.profiler trace of the compiled step, by module.

    python -m benchmarks.profile_step --config configs/hico.py --batch 2 --image-size 512,512
    python -m benchmarks.profile_step --config configs/hico.py --batch 2 --image-size 512,512 \
        --inference

Builds the trainer's step exactly as `benchmarks/train_step.py` does (random weights, one fixed
random batch), runs it `--steps` times under `jax.profiler.trace` and sums the time of every
executed XLA operation (one profiler event per thunk on XLA:CPU, per kernel on GPU), grouped by
the Flax module and direction in the operation's `op_name` metadata:
`jit(step)/jvp(HOICLIP)/HOICLIP.detect/backbone/layer2/...` is the backbone's layer2 forward,
`transpose(jvp(...))` its backward. The matcher, losses and optimizer carry the named scopes of
`hoiclip_jax/train/step.py`. With `--inference` the evaluator's forward (`train=False`) is
profiled instead.

The summed operation time is busy time, not wall time: on a multi-core CPU operations of
independent branches run concurrently, so the total may exceed the wall time of a step (both
are printed). Results: benchmarks/README.md, "Where the time goes".
"""
import collections
import glob
import os
import re
import tempfile
import time

import jax

from benchmarks import train_step as bench
from hoiclip_jax.lib import host_memory

_BACKWARD = "transpose(jvp("
_FORWARD = "jvp("
# Top-level modules of HOICLIP, by the first path element after the model's scope. The heads are
# everything the classifiers and box MLPs compute (HOICLIP.obj_logits, .hoi_logits, the box MLPs
# and the frozen CLIP projection that maps O_inter into the joint space).
_MODULE_GROUPS = {
    "backbone": "backbone", "input_proj": "encoder", "encoder": "encoder",
    "instance_decoder": "instance decoder", "query_embed_h": "instance decoder",
    "query_embed_o": "instance decoder", "pos_guided_embed": "instance decoder",
    "clip.encode_image": "CLIP image tower", "interaction": "interaction decoder",
    "HOICLIP.hoi_logits": "heads", "HOICLIP.obj_logits": "heads", "hum_bbox_embed": "heads",
    "obj_bbox_embed": "heads", "clip.project_image": "heads",
}
_SCOPES = ("matcher", "losses", "optimizer")


def _op_names(hlo_text: str) -> dict[str, str]:
    """{instruction name: op_name metadata} of the compiled module's instructions.

    XLA:CPU strips the metadata of many fusions (e.g. the YNNPACK convolution fusions); such an
    instruction is named after its fused computation's root (else its first named instruction),
    else after its first user that has
    an op_name (the bitcast or add that consumes a convolution carries the convolution's name).
    """
    names, root_names, fusion_calls, users = {}, {}, {}, {}
    instruction = re.compile(r'^\s*(ROOT\s+)?%?([\w.\-]+)\s*=')
    op_name = re.compile(r'op_name="([^"]+)"')
    computation, root, first = None, None, None
    for line in hlo_text.splitlines():
        if line.endswith("{") and " = " not in line:
            computation, root, first = line.split("(")[0].split()[-1].lstrip("%"), None, None
            continue
        if line.startswith("}"):
            root_names[computation] = root or first
            continue
        match = instruction.match(line)
        if not match:
            continue
        name = match.group(2)
        found = op_name.search(line)
        if found:
            names.setdefault(name, found.group(1))
            first = first or found.group(1)
            if match.group(1):
                root = found.group(1)
        if " fusion(" in line:
            fusion_calls[name] = re.search(r"calls=%?([\w.\-]+)", line).group(1)
        operands = line.split("=", 1)[1].split("metadata=")[0]
        for operand in re.findall(r"%([\w.\-]+)", operands):
            users.setdefault(operand, []).append(name)
    for fusion, called in fusion_calls.items():
        if fusion not in names and root_names.get(called):
            names[fusion] = root_names[called]
    for name in list(fusion_calls):
        if name not in names:
            named = [names[u] for u in users.get(name, ()) if u in names]
            if named:
                names[name] = named[0]
    return names


def classify(op_name: str) -> tuple[str, str]:
    """(component, 'forward' | 'backward' | '') of one operation's op_name metadata."""
    direction = ("backward" if _BACKWARD in op_name else
                 "forward" if _FORWARD in op_name else "")
    for scope in _SCOPES:
        if f"/{scope}/" in op_name or op_name.endswith(f"/{scope}"):
            return scope, direction if scope == "losses" else ""
    # The model's scope: `jvp(HOICLIP)/` or `transpose(jvp(HOICLIP))/` in the train step,
    # `HOICLIP/` in the evaluation forward.
    found = re.search(r"HOICLIP\)*/", op_name)
    path = op_name[found.end():] if found else ""
    path = path.removeprefix("HOICLIP.detect/")
    first = path.split("/")[0]
    group = _MODULE_GROUPS.get(first)
    if group == "backbone":
        stage = path.split("/")[1] if path.count("/") else ""
        group = f"backbone {stage}" if stage.startswith(("stem", "layer")) else "backbone"
    if group is None:
        group = "model (other)" if path else "other"
    return group, direction


def _events(trace_dir: str, module_name: str):
    """(hlo_op, duration_ns) of every executed operation of `module_name` in the trace."""
    from jax.profiler import ProfileData
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        data = ProfileData.from_file(path)
        for plane in data.planes:
            for line in plane.lines:
                for event in line.events:
                    stats = {key: value for key, value in event.stats}
                    if stats.get("hlo_module") == module_name and "hlo_op" in stats:
                        yield stats["hlo_op"], event.duration_ns


def profile(compiled, args: tuple, steps: int, run=None) -> tuple[dict, dict, float]:
    """Traces `steps` calls of `compiled(*args)`.

    Returns:
      ({(group, direction): ms per step}, {(operation, op_name): ms per step}, wall ms per
      step).

    `run(compiled, args)` performs one call and returns what to wait for (default: the
    outputs); a training step feeds its new state back itself.
    """
    run = run or (lambda c, a: c(*a))
    names = _op_names(compiled.as_text())
    module = re.search(r"HloModule\s+([\w.\-]+)", compiled.as_text()).group(1)
    jax.block_until_ready(run(compiled, args))
    trace_dir = tempfile.mkdtemp(prefix="hoiclip_profile_")
    with jax.profiler.trace(trace_dir):
        start = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(run(compiled, args))
        wall = (time.perf_counter() - start) / steps
    totals, by_op = collections.Counter(), collections.Counter()
    for op, duration in _events(trace_dir, module):
        totals[classify(names.get(op, op))] += duration / 1e6 / steps
        by_op[(op, names.get(op, ""))] += duration / 1e6 / steps
    return dict(totals), dict(by_op), wall * 1e3


def format_breakdown(totals: dict, wall_ms: float) -> str:
    """A Markdown table: component, forward / backward / other ms per step, share of the sum."""
    groups = sorted({g for g, _ in totals}, key=lambda g: -sum(
        v for (k, _), v in totals.items() if k == g))
    busy = sum(totals.values())
    lines = ["| component | forward ms | backward ms | other ms | share |", "|---|---|---|---|---|"]
    for group in groups:
        row = [totals.get((group, d), 0.0) for d in ("forward", "backward", "")]
        lines.append(f"| {group} | " + " | ".join(f"{v:,.0f}" for v in row)
                     + f" | {100 * sum(row) / busy:.1f} % |")
    lines.append(f"| **sum of operation times** | | | {busy:,.0f} | 100 % |")
    lines.append(f"| wall time per step | | | {wall_ms:,.0f} | |")
    return "\n".join(lines)


def main(argv) -> None:
    from absl import flags
    f = flags.FLAGS
    config = bench.config_from_flags(argv)
    batch_size = f.batch or config.train.batch_size
    prepared = bench.prepare(config, batch_size)
    if f.inference:
        compiled, args = bench.compile_inference(prepared)
        totals, by_op, wall = profile(compiled, args, f.steps)
    else:
        holder = {"state": prepared.state}

        def run(c, a):
            holder["state"], metrics = c(holder["state"], a[0])
            return holder["state"], metrics
        totals, by_op, wall = profile(prepared.compiled, (prepared.batch,), f.steps, run)
    print(f"{'inference' if f.inference else 'train step'}: batch {batch_size}, image "
          f"{tuple(config.dataset.canvas)}, {jax.default_backend()}, {f.steps} traced steps")
    print(format_breakdown(totals, wall))
    if f.top:
        print(f"\nThe {f.top} longest operations (ms per step):")
        for (op, name), ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:f.top]:
            print(f"{ms:9.1f}  {op:32s} {name}")


if __name__ == "__main__":
    # As the trainer does (hoiclip_jax/lib/host_memory.py): the step runs with the malloc
    # settings that keep its buffers mapped between calls.
    host_memory.reexec_with_malloc_tunables()
    from absl import app, flags

    bench.define_step_flags(2, "Traced steps.")
    flags.DEFINE_bool("inference", False, "Profile the evaluation forward instead.")
    flags.DEFINE_integer("top", 0, "Also list the N longest operations.")
    app.run(main)
