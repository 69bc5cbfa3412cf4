"""models/conv.py: the matrix-product backward pass equals JAX's own convolution gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hoiclip_jax.models import conv


def _vjp(fn, x, w, stride, padding, ct):
    _, pullback = jax.vjp(lambda x, w: fn(x, w, stride, padding), x, w)
    return pullback(ct)


# (H, W, Cin, Cout, kernel, stride): every bottleneck case (1x1 and 3x3, stride 1 and 2), the
# 7x7/2 stem, odd sizes whose last row and column a strided window does not reach, and more
# input than output channels and the reverse.
CASES = [(8, 8, 6, 4, 1, 1), (9, 7, 4, 6, 1, 2), (8, 8, 5, 3, 3, 1), (9, 11, 3, 5, 3, 2),
         (15, 13, 3, 4, 7, 2), (10, 10, 8, 2, 3, 2)]


@pytest.mark.parametrize("h,w,cin,cout,k,stride", CASES)
def test_forward_and_gradients_equal_lax(h, w, cin, cout, k, stride):
    rng = np.random.default_rng(h * 100 + k * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    padding = k // 2
    y = conv.conv2d(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, conv._forward(x, kernel, stride, padding))  # same op
    ct = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    expected = jax.jit(_vjp, static_argnums=(0, 3, 4))(conv._forward, x, kernel, stride,
                                                       padding, ct)
    got = jax.jit(_vjp, static_argnums=(0, 3, 4))(conv.conv2d, x, kernel, stride, padding, ct)
    for name, a, b in zip(("input", "kernel"), expected, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.abs(a).max()),
                                   err_msg=name)


def test_bfloat16_gradients_keep_dtype_and_are_close():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.bfloat16)
    ct = jnp.ones((2, 5, 5, 5), jnp.bfloat16)
    expected = _vjp(conv._forward, x, kernel, 2, 1, ct)
    got = _vjp(conv.conv2d, x, kernel, 2, 1, ct)
    for a, b in zip(expected, got):
        assert b.dtype == jnp.bfloat16
        a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(b32, a32, rtol=2e-2, atol=2e-2 * np.abs(a32).max())


def test_conv_module_has_nn_conv_parameters():
    module = conv.Conv(8, 3, 2, 1, jax.nn.initializers.lecun_normal())
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))["params"]
    assert jax.tree.map(jnp.shape, params) == {"kernel": (3, 3, 4, 8)}


def test_biased_conv_module_equals_nn_conv_with_its_gradients():
    """`input_proj` (a 1x1 convolution with bias) takes nn.Conv's params and computes its values
    and gradients (the matrix-product backward pass, models/conv.py)."""
    import flax.linen as nn
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 16)), jnp.float32)
    ours = conv.Conv(8, 1, 1, 0, nn.initializers.lecun_normal(), bias_init=nn.initializers.normal())
    theirs = nn.Conv(8, (1, 1))
    params = ours.init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.map(jnp.shape, params) == {"kernel": (1, 1, 16, 8), "bias": (8,)}
    ct = jnp.asarray(rng.normal(size=(2, 5, 6, 8)), jnp.float32)

    def pullback(module, params, x):
        y, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)
        return y, vjp(ct)
    y_ours, (dp_ours, dx_ours) = pullback(ours, params, x)
    y_theirs, (dp_theirs, dx_theirs) = pullback(theirs, params, x)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx_ours, dx_theirs, rtol=1e-5, atol=1e-5)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(dp_ours[name], dp_theirs[name], rtol=1e-5, atol=1e-5,
                                   err_msg=name)


@pytest.mark.parametrize("size", [32, 35])
def test_clip_patch_embedding_equals_the_strided_convolution(size):
    """CLIP's patch embedding as one product equals nn.Conv(kernel = stride = P, 'VALID') on the
    same kernel, also when trailing pixels fill no whole patch (35 = 4 * 8 + 3)."""
    import flax.linen as nn
    from hoiclip_jax.models.clip import PatchEmbedding
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    module = PatchEmbedding(width=12, patch_size=8)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    reference = nn.Conv(12, (8, 8), strides=(8, 8), padding="VALID", use_bias=False)
    expected = reference.apply({"params": params}, x)
    got = module.apply({"params": params}, x)
    assert got.shape == (2, 16, 12)
    np.testing.assert_allclose(got, expected.reshape(2, 16, 12), rtol=1e-5, atol=1e-5)
