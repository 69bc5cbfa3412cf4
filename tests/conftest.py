"""Test set-up: simulated CPU devices must exist before jax is first imported."""
import os

NUM_TEST_DEVICES = 4
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_TEST_DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
