"""The optimizer of the reference (§1.8, §4.1): parameter groups by regex, the 0.1x backbone
rate, global-norm clipping at 0.1 before AdamW, the lr drop, decoupled weight decay, and the
schedules following the global step through skipped steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hoiclip_jax.lib import config_base
from hoiclip_jax.train import optim

# Parameter paths of the real model's kinds (backbone norm, stem, layer1, later stages, CLIP,
# the text classifiers, a transformer layer).
PARAMS = {
    "backbone": {"stem": {"conv": {"kernel": jnp.ones((2,))}},
                 "layer1": {"block0": {"conv1": {"kernel": jnp.ones((2,))}}},
                 "layer2": {"block0": {"conv1": {"kernel": jnp.ones((2,))},
                                       "bn1": {"scale": jnp.ones((2,))}}}},
    "clip": {"vision_model": {"w": jnp.ones((2,))}},
    "hoi_visual_projection": {"kernel": jnp.ones((2,)), "bias": jnp.ones((2,))},
    "obj_visual_projection": {"kernel": jnp.ones((2,))},
    "encoder": {"layer0": {"kernel": jnp.ones((2,))}},
    "verb_projection": {"kernel": jnp.ones((2,))},
}


def reference_config():
    config = config_base.hoiclip_config("hico")
    return config


def test_groups_follow_the_reference_rules():
    labels = optim.label_params(PARAMS, optim.parameter_groups(reference_config()))
    assert labels["backbone"]["stem"]["conv"]["kernel"] == "frozen"
    assert labels["backbone"]["layer1"]["block0"]["conv1"]["kernel"] == "frozen"
    assert labels["backbone"]["layer2"]["block0"]["bn1"]["scale"] == "frozen"
    assert labels["backbone"]["layer2"]["block0"]["conv1"]["kernel"] == "backbone"
    assert labels["clip"]["vision_model"]["w"] == "frozen"
    assert labels["hoi_visual_projection"]["bias"] == "frozen"
    assert labels["obj_visual_projection"]["kernel"] == "frozen"
    assert labels["encoder"]["layer0"]["kernel"] == "default"
    assert labels["verb_projection"]["kernel"] == "default"  # E_v trains, as the reference


def test_frozen_verb_features_and_unmatched_parameters():
    config = reference_config()
    config.model.train_verb_features = False
    labels = optim.label_params(PARAMS, optim.parameter_groups(config))
    assert labels["verb_projection"]["kernel"] == "frozen"
    with pytest.raises(ValueError, match="parameter 'extra/w' matches no rule"):
        optim.label_params({"extra": {"w": jnp.ones(1)}}, ((r"encoder/.*", "default"),))
    trainable, frozen = optim.split_frozen(PARAMS, labels)
    assert "clip" in frozen and "clip" not in trainable
    restored = optim.merge_params(trainable, frozen)
    assert jax.tree.structure(restored) == jax.tree.structure(PARAMS)


def make_tx(lr_drop_epochs=(2,), weight_decay=0.0, clip=1e9):
    o = reference_config().optim
    o.lr_drop_epochs, o.weight_decay, o.grad_clip_norm = lr_drop_epochs, weight_decay, clip
    labels = {"backbone": {"w": "backbone"}, "head": {"w": "default"}}
    tx, schedules = optim.make_optimizer(o, labels, steps_per_epoch=1)
    return o, tx, schedules


def adam_first_step(lr: float, grad: float) -> float:
    """Adam's first update of one scalar from zero moments: -lr * g / (|g| + eps)."""
    return -lr * grad / (abs(grad) + 1e-8)


def test_backbone_rate_is_a_tenth_and_drops_tenfold():
    o, tx, schedules = make_tx()
    assert schedules["default"](0) == pytest.approx(1e-4)
    assert schedules["backbone"](0) == pytest.approx(1e-5)
    assert schedules["default"](1) == pytest.approx(1e-4)
    assert schedules["default"](2) == pytest.approx(1e-5)  # drop at epoch 2 = step 2
    assert schedules["backbone"](2) == pytest.approx(1e-6)
    params = {"backbone": {"w": jnp.zeros(())}, "head": {"w": jnp.zeros(())}}
    grads = {"backbone": {"w": jnp.ones(())}, "head": {"w": jnp.ones(())}}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["w"], adam_first_step(o.lr, 1.0), rtol=1e-5)
    np.testing.assert_allclose(updates["backbone"]["w"], adam_first_step(o.lr * 0.1, 1.0),
                               rtol=1e-5)


def test_global_norm_is_clipped_before_adam():
    _, tx, _ = make_tx(clip=0.1)
    params = {"backbone": {"w": jnp.zeros(2)}, "head": {"w": jnp.zeros(2)}}
    grads = {"backbone": {"w": jnp.array([3.0, 0.0])}, "head": {"w": jnp.array([0.0, 4.0])}}
    clipped, _ = optax.clip_by_global_norm(0.1).update(grads, None)
    assert float(optax.tree.norm(clipped)) == pytest.approx(0.1, rel=1e-5)
    # The whole chain's first Adam moment is (1 - b1) times the clipped gradient.
    _, state = tx.update(grads, tx.init(params), params)
    mu = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
        x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
    first = {k: np.asarray(m.mu[k]["w"]) for m in mu for k in m.mu
             if not isinstance(m.mu[k]["w"], optax.MaskedNode)}
    assert set(first) == {"backbone", "head"}
    np.testing.assert_allclose(first["head"], 0.1 * np.asarray(clipped["head"]["w"]), rtol=1e-5)
    np.testing.assert_allclose(first["backbone"], 0.1 * np.asarray(clipped["backbone"]["w"]),
                               rtol=1e-5)


def test_weight_decay_is_decoupled_and_scaled_by_the_rate():
    o, tx, _ = make_tx(weight_decay=1e-4)
    params = {"backbone": {"w": jnp.full((), 2.0)}, "head": {"w": jnp.full((), 2.0)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    # No gradient: the update is the decay alone, -lr * wd * param (AdamW, not L2 in the loss).
    np.testing.assert_allclose(updates["head"]["w"], -o.lr * 1e-4 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(updates["backbone"]["w"], -o.lr * 0.1 * 1e-4 * 2.0, rtol=1e-5)


def test_schedule_count_follows_the_step_after_a_skipped_step():
    """The train step keeps the old optimizer state on a non-finite step; the schedules must
    still count it, so that the lr drop comes at its epoch."""
    o, tx, schedules = make_tx(lr_drop_epochs=(1,))
    params = {"backbone": {"w": jnp.zeros(())}, "head": {"w": jnp.zeros(())}}
    state = tx.init(params)
    assert [int(c) for c in optim.schedule_counts(state)] == [0, 0]
    skipped = optim.with_schedule_count(state, 1)  # step 0 skipped: old state, count 1
    assert [int(c) for c in optim.schedule_counts(skipped)] == [1, 1]
    adam = lambda s: [int(x.count) for x in jax.tree.leaves(s, is_leaf=lambda n: isinstance(
        n, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)]
    assert adam(skipped) == adam(state) == [0, 0]  # Adam's moments did not see the step
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, skipped, params)
    # Step 1 runs after the drop (epoch 1): the dropped rate is applied.
    np.testing.assert_allclose(updates["head"]["w"], adam_first_step(o.lr * 0.1, 1.0),
                               rtol=1e-5)
    assert schedules["default"](1) == pytest.approx(o.lr * 0.1)


def test_warmup_ramps_linearly_then_follows_the_drops():
    o = reference_config().optim
    o.lr_drop_epochs, o.warmup_steps = (2,), 4
    labels = {"backbone": {"w": "backbone"}, "head": {"w": "default"}}
    _, schedules = optim.make_optimizer(o, labels, steps_per_epoch=3)
    ramp = [float(schedules["default"](s)) for s in range(8)]
    # Steps 0..3 ramp to the full rate, the drop at epoch 2 (step 6) still applies on top.
    np.testing.assert_allclose(ramp, [2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5],
                               rtol=1e-6)
    assert float(schedules["backbone"](1)) == pytest.approx(5e-6)
    o.warmup_steps = 0  # the reference: no ramp
    _, schedules = optim.make_optimizer(o, labels, steps_per_epoch=3)
    assert float(schedules["default"](0)) == pytest.approx(1e-4)
