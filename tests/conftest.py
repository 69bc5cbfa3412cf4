"""Test set-up: simulated CPU devices must exist before jax is first imported."""
import os
import sys

NUM_TEST_DEVICES = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The configs are imported as the `configs` package from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
