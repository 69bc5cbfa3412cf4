"""Set losses against loop-by-loop numpy formulas of reference §2.2."""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from hoiclip_jax.train import losses
from tests import helpers

BASES = ("loss_hoi_labels", "loss_obj_ce", "loss_sub_bbox", "loss_obj_bbox", "loss_sub_giou",
         "loss_obj_giou")


def _loss_config(**overrides):
    base = dict(hoi_coef=2.0, obj_coef=1.0, bbox_coef=2.5, giou_coef=1.0, eos_coef=0.1,
                focal_alpha=0.5, normalizer="global")
    return mlc.ConfigDict(dict(base, **overrides))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def _make_case(rng, num_layers=2, b=2, n=3, m=2, k=4, o=2):
    """Random outputs and a batch: image 0 has an object pair and a V-COCO no-object pair, image 1
    has no GT at all."""
    outputs = {
            "hoi_logits": rng.normal(size=(num_layers, b, n, k)).astype(np.float32),
            "obj_logits": rng.normal(size=(num_layers, b, n, o + 1)).astype(np.float32),
            "sub_boxes": rng.uniform(0.2, 0.6, size=(num_layers, b, n, 4)).astype(np.float32),
            "obj_boxes": rng.uniform(0.2, 0.6, size=(num_layers, b, n, 4)).astype(np.float32),
    }
    pair_mask = np.zeros((b, m), bool)
    pair_mask[0, :2] = True
    batch = {
            "hoi_labels": np.zeros((b, m, k), np.float32),
            "obj_labels": np.zeros((b, m), np.int32),
            "sub_boxes": np.zeros((b, m, 4), np.float32),
            "obj_boxes": np.zeros((b, m, 4), np.float32),
            "obj_exists": np.zeros((b, m), bool),
            "pair_mask": pair_mask,
    }
    batch["hoi_labels"][0, 0, [0, 2]] = 1
    batch["hoi_labels"][0, 1, 1] = 1
    batch["obj_labels"][0] = [1, 0]
    batch["obj_exists"][0, 0] = True
    batch["sub_boxes"][0] = rng.uniform(0.3, 0.5, size=(m, 4))
    batch["obj_boxes"][0, 0] = rng.uniform(0.3, 0.5, size=4)
    return outputs, batch


def _hand_terms(outputs, batch, indices, alpha, eos, num_pairs=None):
    """Every term of every layer with explicit loops (independent of hoiclip_jax.losses).

    `num_pairs` overrides the subject-box normaliser (default: the batch's pairs, clamped >= 1).
    """
    num_layers, b, n, k = outputs["hoi_logits"].shape
    no_obj = outputs["obj_logits"].shape[-1] - 1
    num_pairs = max(batch["pair_mask"].sum(), 1) if num_pairs is None else num_pairs
    terms = {}
    for l in range(num_layers):
        hoi_t, obj_t = np.zeros((b, n, k)), np.full((b, n), no_obj)
        sub_l1 = obj_l1 = sub_g = obj_g = n_obj = 0.0
        for i in range(b):
            for j in range(batch["pair_mask"].shape[1]):
                q = indices[l, i, j]
                if q < 0 or not batch["pair_mask"][i, j]:
                    continue
                hoi_t[i, q], obj_t[i, q] = batch["hoi_labels"][i, j], batch["obj_labels"][i, j]
                ps, gs = outputs["sub_boxes"][l, i, q], batch["sub_boxes"][i, j]
                sub_l1 += np.abs(ps - gs).sum()
                sub_g += 1 - helpers.hand_giou(ps, gs)
                if batch["obj_exists"][i, j]:
                    po, go = outputs["obj_boxes"][l, i, q], batch["obj_boxes"][i, j]
                    obj_l1 += np.abs(po - go).sum()
                    obj_g += 1 - helpers.hand_giou(po, go)
                    n_obj += 1
        p = np.clip(_sigmoid(outputs["hoi_logits"][l]), 1e-4, 1 - 1e-4)
        pos = (alpha * np.log(p) * (1 - p) ** 2)[hoi_t == 1].sum()
        neg = ((1 - alpha) * np.log(1 - p) * p ** 2)[hoi_t < 1].sum()
        num_pos = (hoi_t == 1).sum()
        logits = outputs["obj_logits"][l].astype(np.float64)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ce = -np.take_along_axis(log_p, obj_t[..., None], -1)[..., 0]
        w = np.where(obj_t == no_obj, eos, 1.0)
        suffix = "" if l == num_layers - 1 else f"_{l}"
        terms.update({
                "loss_hoi_labels" + suffix: -(pos + neg) / num_pos if num_pos else -neg,
                "loss_obj_ce" + suffix: (w * ce).sum() / w.sum(),
                "loss_sub_bbox" + suffix: sub_l1 / num_pairs,
                "loss_obj_bbox" + suffix: obj_l1 / (n_obj + 1e-4),
                "loss_sub_giou" + suffix: sub_g / num_pairs,
                "loss_obj_giou" + suffix: obj_g / (n_obj + 1e-4),
        })
    return terms


def _assert_terms_close(got, expected):
    for name, value in expected.items():
        np.testing.assert_allclose(float(got[name]), value, rtol=2e-5, atol=1e-6, err_msg=name)


def test_all_terms_match_hand_formulas():
    outputs, batch = _make_case(np.random.default_rng(0))
    # Aux layer matches both pairs; final layer matches only the no-object pair. Image 1 has no GT
    # and also carries a stray index on a padded column, which must be ignored.
    indices = np.array([[[2, 0], [-1, -1]], [[-1, 1], [1, -1]]], np.int32)
    config = _loss_config(focal_alpha=0.25, eos_coef=0.1)
    terms = losses.set_losses(outputs, batch, indices, config)
    _assert_terms_close(terms, _hand_terms(outputs, batch, indices, 0.25, 0.1))


def test_vcoco_pair_without_object_is_left_out_of_object_box_losses():
    outputs, batch = _make_case(np.random.default_rng(1), num_layers=1)
    indices = np.array([[[0, 2], [-1, -1]]], np.int32)
    terms = losses.set_losses(outputs, batch, indices, _loss_config())
    po, go = outputs["obj_boxes"][0, 0, 0], batch["obj_boxes"][0, 0]
    # Only pair 0 has an object: one box, normalised by 1 + 1e-4.
    np.testing.assert_allclose(terms["loss_obj_bbox"], np.abs(po - go).sum() / 1.0001, rtol=1e-5)
    np.testing.assert_allclose(terms["loss_obj_giou"], (1 - helpers.hand_giou(po, go)) / 1.0001,
                               rtol=1e-5)
    # Subject terms count both pairs and divide by the 2 real pairs.
    sub = [np.abs(outputs["sub_boxes"][0, 0, q] - batch["sub_boxes"][0, j]).sum()
           for j, q in enumerate((0, 2))]
    np.testing.assert_allclose(terms["loss_sub_bbox"], sum(sub) / 2, rtol=1e-5)


def test_focal_without_positives_is_minus_sum_of_negatives():
    logits = np.array([[[[0.0, 3.0], [-2.0, 1.0]]]], np.float32)  # [L=1, B=1, N=2, K=2]
    got = losses.focal_hoi_loss(logits, np.zeros_like(logits), 0.5)
    p = _sigmoid(logits)
    np.testing.assert_allclose(got, [-(0.5 * np.log(1 - p) * p ** 2).sum()], rtol=1e-5)


def test_focal_with_positives_divides_by_their_number():
    logits = np.array([[[[0.0, 3.0], [-2.0, 1.0]]]], np.float32)
    target = np.array([[[[1, 0], [1, 1]]]], np.float32)
    p = _sigmoid(logits)[0, 0]
    pos = 0.7 * (np.log(p[0, 0]) * (1 - p[0, 0]) ** 2 + np.log(p[1, 0]) * (1 - p[1, 0]) ** 2
                 + np.log(p[1, 1]) * (1 - p[1, 1]) ** 2)
    neg = 0.3 * np.log(1 - p[0, 1]) * p[0, 1] ** 2
    np.testing.assert_allclose(losses.focal_hoi_loss(logits, target, 0.7), [-(pos + neg) / 3],
                               rtol=1e-5)


def test_object_ce_weights_no_object_class_by_eos_coef():
    logits = np.array([[[[2.0, 0.0, 1.0], [0.5, -1.0, 1.5]]]], np.float32)  # no-object = 2
    target = np.array([[[0, 2]]], np.int32)
    ce = [np.log(np.exp(logits[0, 0, q]).sum()) - logits[0, 0, q, t] for q, t in ((0, 0), (1, 2))]
    np.testing.assert_allclose(losses.obj_ce_loss(logits, target, 0.1),
                               [(ce[0] + 0.1 * ce[1]) / 1.1], rtol=1e-5)
    np.testing.assert_allclose(losses.obj_ce_loss(logits, target, 1.0), [np.mean(ce)], rtol=1e-5)


def test_aux_layers_are_suffixed_and_total_applies_coefficients():
    outputs, batch = _make_case(np.random.default_rng(2), num_layers=3)
    indices = np.array([[[0, 1], [-1, -1]]] * 3, np.int32)
    terms = losses.set_losses(outputs, batch, indices, _loss_config())
    loss_names = {name for name in terms if name.startswith("loss_")}
    assert loss_names == {b + s for b in BASES for s in ("", "_0", "_1")}
    assert set(terms) - loss_names == {"obj_class_error", "hoi_top5_recall"}

    config = _loss_config(hoi_coef=2.0, obj_coef=3.0, bbox_coef=2.5, giou_coef=0.5)
    expected = 0.0
    for s in ("", "_0", "_1"):
        expected += (2.0 * terms["loss_hoi_labels" + s] + 3.0 * terms["loss_obj_ce" + s]
                     + 2.5 * (terms["loss_sub_bbox" + s] + terms["loss_obj_bbox" + s])
                     + 0.5 * (terms["loss_sub_giou" + s] + terms["loss_obj_giou" + s]))
    np.testing.assert_allclose(losses.total_loss(terms, config), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_mimic_1"):
        losses.total_loss(dict(terms, loss_mimic_1=1.0), config)


def test_metrics_of_final_layer():
    k = 7
    outputs, batch = _make_case(np.random.default_rng(3), num_layers=1, k=k)
    batch["hoi_labels"][0] = 0
    batch["hoi_labels"][0, 0, [0, 6]] = 1
    batch["hoi_labels"][0, 1, 3] = 1
    outputs["hoi_logits"][0, 0, 0] = [9, 5, 4, 3, 2, 1, -1]  # top 5 has class 0, not class 6
    outputs["hoi_logits"][0, 0, 1] = [0, 0, 0, 9, 0, 0, 0]
    outputs["obj_logits"][0, 0, 0] = [0, 5, 0]  # pair 0 (label 1): right
    outputs["obj_logits"][0, 0, 1] = [0, 5, 0]  # pair 1 (label 0): wrong
    terms = losses.set_losses(outputs, batch, np.array([[[0, 1], [-1, -1]]]), _loss_config())
    np.testing.assert_allclose(terms["hoi_top5_recall"], 100 * 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(terms["obj_class_error"], 50.0)


def test_empty_batch_is_finite_with_finite_gradients():
    outputs, batch = _make_case(np.random.default_rng(4), num_layers=2)
    for key in ("hoi_labels", "sub_boxes", "obj_boxes"):
        batch[key][:] = 0
    batch["pair_mask"][:] = False
    batch["obj_exists"][:] = False
    indices = -np.ones((2, 2, 2), np.int32)
    config = _loss_config()
    fn = lambda o: losses.total_loss(losses.set_losses(o, batch, indices, config), config)
    terms = losses.set_losses(outputs, batch, indices, config)
    assert all(np.isfinite(float(v)) for v in terms.values())
    for name in ("loss_sub_bbox", "loss_obj_bbox", "loss_sub_giou", "loss_obj_giou"):
        assert float(terms[name]) == 0.0
    _assert_terms_close(terms, _hand_terms(outputs, batch, indices, 0.5, 0.1))
    grads = jax.grad(fn)(jax.tree.map(jnp.asarray, outputs))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_query_to_gt_inverts_the_matching():
    indices = np.array([[[2, -1, 0], [1, 5, -1]]], np.int32)  # 5 is out of range for N = 4
    pair_mask = np.array([[True, True, True], [True, True, False]])
    np.testing.assert_array_equal(losses.query_to_gt(indices, pair_mask, 4),
                                  [[[2, -1, 0, -1], [-1, 0, -1, -1]]])


def test_normalisers_are_global_under_sharded_jit():
    rng = np.random.default_rng(5)
    outputs, batch = _make_case(rng, num_layers=2, b=4)
    batch["pair_mask"][2, 0] = batch["obj_exists"][2, 0] = True
    batch["sub_boxes"][2, 0] = batch["obj_boxes"][2, 0] = [0.5, 0.5, 0.2, 0.2]
    batch["hoi_labels"][2, 0, 3] = 1
    indices = np.array([[[0, 1], [-1, -1], [2, -1], [-1, -1]]] * 2, np.int32)
    mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    sharded_batch = {k: put(v, P("data")) for k, v in batch.items()}
    sharded_outputs = {k: put(v, P(None, "data")) for k, v in outputs.items()}
    config = _loss_config()
    terms = jax.jit(lambda o, b, i: losses.set_losses(o, b, i, config))(
            sharded_outputs, sharded_batch, put(indices, P(None, "data")))
    _assert_terms_close(terms, _hand_terms(outputs, batch, indices, 0.5, 0.1))


def _four_image_case(seed):
    """Outputs, batch and indices of 4 images whose halves differ in pairs, positives and objects:
    half 0 (images 0, 1) has 2 pairs, one with an object, and 3 positive labels; half 1 (images
    2, 3) has 3 pairs, all with objects, and 4 positive labels. Image 1 has no GT."""
    rng = np.random.default_rng(seed)
    outputs, batch = _make_case(rng, num_layers=2, b=4)
    for image, pairs in ((2, [0]), (3, [0, 1])):
        batch["pair_mask"][image, pairs] = batch["obj_exists"][image, pairs] = True
        for key in ("sub_boxes", "obj_boxes"):
            batch[key][image, pairs] = rng.uniform(0.3, 0.5, size=(len(pairs), 4))
        batch["obj_labels"][image, pairs] = 1
    batch["hoi_labels"][2, 0, 3] = 1
    batch["hoi_labels"][3, 0, [0, 1]] = 1
    batch["hoi_labels"][3, 1, 2] = 1
    indices = np.array([[[0, 1], [-1, -1], [2, -1], [1, 0]],
                        [[1, 2], [-1, -1], [0, -1], [2, 1]]], np.int32)
    return outputs, batch, indices


def _half(tree, axis, part):
    """The first (part 0) or second (part 1) half of every array along `axis`."""
    def cut(x):
        size = x.shape[axis] // 2
        return np.take(x, np.arange(part * size, (part + 1) * size), axis=axis)
    return {k: cut(v) for k, v in tree.items()}


def test_per_device_with_one_device_equals_global():
    outputs, batch, indices = _four_image_case(6)
    global_terms = losses.set_losses(outputs, batch, indices, _loss_config(), num_devices=4)
    per_device = losses.set_losses(outputs, batch, indices,
                                   _loss_config(normalizer="per_device"), num_devices=1)
    expected = {k: float(v) for k, v in global_terms.items()}
    _assert_terms_close(per_device, expected)
    # 'global' ignores the device count: it equals the loop formulas over the whole batch.
    _assert_terms_close(global_terms, _hand_terms(outputs, batch, indices, 0.5, 0.1))


def test_per_device_normalises_each_half_and_averages():
    outputs, batch, indices = _four_image_case(7)
    config = _loss_config(normalizer="per_device", focal_alpha=0.25)
    terms = losses.set_losses(outputs, batch, indices, config, num_devices=2)
    # Reference on 2 GPUs: each GPU's own counts, except the subject boxes, which divide by the
    # all-reduced pair count / world size (5 pairs / 2); DDP then averages the two losses.
    halves = [_hand_terms(_half(outputs, 1, d), _half(batch, 0, d),
                          _half({"i": indices}, 1, d)["i"], 0.25, 0.1, num_pairs=5 / 2)
              for d in (0, 1)]
    expected = {name: (halves[0][name] + halves[1][name]) / 2 for name in halves[0]}
    _assert_terms_close(terms, expected)
    # The case is one where the scope matters: every normalised term differs from 'global'.
    global_terms = losses.set_losses(outputs, batch, indices,
                                     _loss_config(focal_alpha=0.25), num_devices=2)
    for base in ("loss_hoi_labels", "loss_obj_ce", "loss_obj_bbox"):
        assert abs(float(terms[base]) - float(global_terms[base])) > 1e-3, base


def test_per_device_under_sharded_jit_equals_unsharded_groups():
    outputs, batch, indices = _four_image_case(8)
    config = _loss_config(normalizer="per_device")
    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:2])
    put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
    terms = jax.jit(lambda o, b, i: losses.set_losses(o, b, i, config, num_devices=2))(
            {k: put(v, P(None, "data")) for k, v in outputs.items()},
            {k: put(v, P("data")) for k, v in batch.items()}, put(indices, P(None, "data")))
    unsharded = losses.set_losses(outputs, batch, indices, config, num_devices=2)
    _assert_terms_close(terms, {k: float(v) for k, v in unsharded.items()})


def test_normalizer_errors_name_the_problem():
    outputs, batch, indices = _four_image_case(9)
    with pytest.raises(ValueError, match="normalizer = 'per_gpu'"):
        losses.set_losses(outputs, batch, indices, _loss_config(normalizer="per_gpu"))
    with pytest.raises(ValueError, match="4 images does not split into 3"):
        losses.set_losses(outputs, batch, indices, _loss_config(normalizer="per_device"),
                          num_devices=3)
