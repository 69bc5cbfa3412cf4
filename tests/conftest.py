"""Test set-up: simulated CPU devices must exist before jax is first imported."""
import os

NUM_TEST_DEVICES = 4
# LLVM's optimisation level 0 for the tests' tiny programs: XLA's compile dominates most tests
# (the tiny train step: 18 s to compile, 0.1 s to run), and level 0 compiled tests/test_train_step.py
# in 78 s instead of 100 s. The HLO and its float semantics are the same; only the machine code
# is less optimised. Subprocesses started by the tests inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}"
    " --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
