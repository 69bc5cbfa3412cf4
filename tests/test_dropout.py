"""models/dropout.py: nn.Dropout's semantics with a cheaper generator, and batch-partitionable."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hoiclip_jax.lib import sharding
from hoiclip_jax.models.dropout import Dropout, keep_mask


def test_keep_frequency_is_the_quantised_keep_probability():
    mask = np.asarray(keep_mask(jax.random.PRNGKey(0), (4, 8, 128, 256), 0.9))
    expected = 58982 / 65536
    # 1M draws: the standard error of the mean is 3e-4.
    assert abs(mask.mean() - expected) < 1.5e-3
    # Each row and each of the four 16-bit lanes of a word are fair, not only the total.
    assert np.all(np.abs(mask.reshape(4, -1).mean(1) - expected) < 3e-3)
    words = mask.reshape(4, -1)[:, :4 * (mask[0].size // 4)]
    quarter = words.shape[1] // 4
    lanes = words.reshape(4, 4, quarter).mean(axis=(0, 2))
    assert np.all(np.abs(lanes - expected) < 3e-3)


def test_masks_differ_across_keys_rows_and_positions():
    key = jax.random.PRNGKey(1)
    a = np.asarray(keep_mask(key, (2, 1000), 0.5))
    b = np.asarray(keep_mask(jax.random.fold_in(key, 1), (2, 1000), 0.5))
    assert (a != b).mean() > 0.4
    assert (a[0] != a[1]).mean() > 0.4
    # Neighbouring positions are independent (the four lanes of a word are not copies).
    assert abs((a[:, :-1] == a[:, 1:]).mean() - 0.5) < 0.05


def test_typed_and_raw_keys_give_the_same_mask():
    raw = jax.random.PRNGKey(7)
    typed = jax.random.wrap_key_data(raw)
    np.testing.assert_array_equal(keep_mask(raw, (3, 5, 7), 0.8), keep_mask(typed, (3, 5, 7), 0.8))


def test_module_scales_kept_values_and_is_identity_when_deterministic():
    x = jnp.arange(1.0, 2001.0).reshape(2, 1000)
    layer = Dropout(0.25)
    y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    assert 0.70 < kept.mean() < 0.80
    np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(
        Dropout(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)}), x)
    assert y.dtype == x.dtype


@pytest.mark.parametrize("num_devices", [2, 4])
def test_batch_sharded_mask_equals_the_single_device_mask(num_devices):
    mesh = sharding.make_mesh(jax.devices()[:num_devices])
    key = jax.random.PRNGKey(3)
    make = lambda k: keep_mask(k, (8, 6, 33), 0.9)
    single = np.asarray(jax.jit(make)(key))
    sharded = jax.jit(make, out_shardings=NamedSharding(mesh, P(sharding.DATA_AXIS)))(key)
    assert len(sharded.sharding.device_set) == num_devices
    np.testing.assert_array_equal(np.asarray(sharded), single)
