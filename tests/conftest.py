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

# The slowest test files, longest first (seconds of test time summed per file, make test of
# 2026-12-07 on the 2-core machine, both workers busy): `make test` hands whole files to two
# workers in collection order, and with a long file last one worker was left running it alone.
SLOW_FILES_FIRST = (
    "test_experiment_configs.py",  # ~200 s
    "test_multiprocess.py",     # ~140 s: three training processes at once
    "test_model.py",            # ~140 s
    "test_resume.py",           # ~100 s
    "test_train_step.py",       # ~90 s: the tiny step compiled for 1 and 4 devices
    "test_microbatches.py",     # ~85 s
    "test_predict.py",          # ~70 s
    "test_mixed_precision.py",  # ~65 s
    "test_end_to_end.py",       # ~65 s
    "test_benchmark_train_step.py",  # ~60 s
    "test_real_configs.py",     # ~60 s
    "test_robust_config.py",    # ~35 s
    "test_remat.py",            # ~30 s
    "test_host_memory.py",      # ~25 s
)


def pytest_collection_modifyitems(items):
    """Reorders the collected tests: SLOW_FILES_FIRST in that order, then the rest as collected
    (a stable sort; every worker computes the same order, as xdist requires)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
