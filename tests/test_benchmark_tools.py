"""benchmarks/{profile_step,accelerator,memory,side_by_side}.py: the pieces that turn XLA's output
and timings into tables."""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accelerator, memory, profile_step, side_by_side


@pytest.mark.parametrize("op_name,expected", [
    ("jit(step)/jvp(HOICLIP)/HOICLIP.detect/backbone/layer2/block0/conv2/conv_general_dilated",
     ("backbone layer2", "forward")),
    ("jit(step)/transpose(jvp(HOICLIP))/HOICLIP.detect/encoder/layer0/norm2/mul",
     ("encoder", "backward")),
    ("jit(step)/jvp(HOICLIP)/clip.encode_image/vision_model/encoder/layers/0/add",
     ("CLIP image tower", "forward")),
    ("jit(step)/transpose(jvp(HOICLIP))/interaction/layer1/norm3/add",
     ("interaction decoder", "backward")),
    ("jit(step)/transpose(jvp(HOICLIP))/HOICLIP.hoi_logits/inter2verb/layer0/reduce_sum",
     ("heads", "backward")),
    ("jit(step)/jvp()/matcher/pure_callback", ("matcher", "")),
    ("jit(step)/optimizer/div", ("optimizer", "")),
    ("jit(step)/jvp()/losses/log", ("losses", "forward")),
    ("jit(step)/jit(_where)/select_n", ("other", "")),
    ("jit(predict)/HOICLIP/HOICLIP.detect/encoder/layer0/add", ("encoder", "")),
])
def test_operations_are_grouped_by_module_and_direction(op_name, expected):
    assert profile_step.classify(op_name) == expected


def test_op_names_reach_fusions_without_metadata():
    def f(x, w):
        with jax.named_scope("optimizer"):
            return jnp.tanh(x @ w).sum(0)
    compiled = jax.jit(f).lower(jnp.ones((8, 4)), jnp.ones((4, 4))).compile()
    names = profile_step._op_names(compiled.as_text())
    assert names and all(isinstance(v, str) for v in names.values())
    assert any("optimizer" in v for v in names.values())


def test_profile_sums_the_operations_of_a_traced_function():
    compiled = jax.jit(lambda x: jnp.tanh(x @ x.T).sum()).lower(jnp.ones((256, 256))).compile()
    totals, by_op, wall_ms = profile_step.profile(compiled, (jnp.ones((256, 256)),), steps=2)
    assert wall_ms > 0 and by_op and sum(totals.values()) == pytest.approx(sum(by_op.values()))
    table = profile_step.format_breakdown(totals, wall_ms)
    assert "sum of operation times" in table and "wall time per step" in table


def test_peak_table_lookup():
    assert accelerator.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert accelerator.peak_tflops("NVIDIA A100-SXM4-40GB", "float32") == 156.0
    assert accelerator.peak_tflops("cpu", "float32") is None
    assert accelerator.parse_row("1216x1216:bfloat16:device") == accelerator.Row(
            (1216, 1216), "bfloat16", "device")


def test_memory_rows_parse():
    assert memory.parse_row("1333x1333:float32:nothing_saveable:4") == (
            (1333, 1333), "float32", "nothing_saveable", 4)
    assert len(memory.DEFAULT_ROWS) == len(set(memory.DEFAULT_ROWS))


# Speaks torch_proxy_step.py's --serve protocol; a 'train' call takes ~20 ms, 'inference' ~10.
FAKE_PROXY = """
import sys, time
print("torch fake, 2 threads")
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        print("rss 1.5", flush=True)
        break
    start = time.perf_counter()
    time.sleep(0.02 if line.strip() == "train" else 0.01)
    print(f"ms {(time.perf_counter() - start) * 1e3:.1f}", flush=True)
"""


def test_side_by_side_takes_turns_with_a_serving_worker():
    worker = side_by_side.TorchWorker([sys.executable, "-c", FAKE_PROXY])
    assert worker.header == ["torch fake, 2 threads"]
    order = []

    def ours():
        order.append("ours")
        return 0.015

    def theirs():
        order.append("theirs")
        return worker.call("train")

    mine, other = side_by_side.take_turns(ours, theirs, rounds=3)
    assert order == ["theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert mine == [0.015] * 3 and all(0.019 < t < 0.5 for t in other)
    assert 0.009 < worker.call("inference") < 0.5
    assert worker.close() == 1.5
    comparison = side_by_side.Comparison("train", (1.0, 2.0, 3.0), (2.0, 2.0, 2.0))
    np.testing.assert_allclose(comparison.ratios, [0.5, 1.0, 1.5])
    table = side_by_side.format_table([comparison])
    assert "| train | 2,000 (2,000-2,000) | 2,000 (1,200-2,800) | **1.00x** (0.60-1.40) | 3 |" \
        in table


def test_side_by_side_names_a_worker_that_never_gets_ready():
    with pytest.raises(RuntimeError, match="ended before it was ready"):
        side_by_side.TorchWorker([sys.executable, "-c", "print('no torch here')"])
