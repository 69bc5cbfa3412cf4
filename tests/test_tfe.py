"""Training-free enhancement (hoiclip_jax/eval/tfe.py) and its place in the triplet scores."""
import jax.numpy as jnp
import numpy as np
import pytest

from hoiclip_jax.eval import inference, scoring, tfe


def _normalised(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_bonus(clip_cls, hoi_text, k, weight):
    s = clip_cls @ hoi_text
    masked = np.zeros_like(s)
    for i, row in enumerate(s):
        top = np.argsort(-row, kind="stable")[:k]
        masked[i, top] = row[top]
    return weight / (1 + np.exp(-masked))


def test_bonus_equals_numpy_and_masked_classes_get_half_the_weight():
    rng = np.random.default_rng(0)
    clip_cls, hoi_text = _normalised(rng, 3, 16), _normalised(rng, 7, 16).T
    got = np.asarray(tfe.bonus(jnp.asarray(clip_cls), jnp.asarray(hoi_text), 3, 2.0))
    np.testing.assert_allclose(got, numpy_bonus(clip_cls, hoi_text, 3, 2.0), atol=1e-6)
    # Per image: 3 classes above or below 1.0 (sigmoid of their cosine x 2), 4 exactly 1.0.
    assert ((got == 1.0).sum(axis=1) == 4).all()
    with pytest.raises(ValueError, match="k=8"):
        tfe.bonus(jnp.asarray(clip_cls), jnp.asarray(hoi_text), 8)


def test_bonus_is_added_before_the_object_term_of_every_query():
    rng = np.random.default_rng(1)
    b, n, k_hois, o = 2, 3, 5, 4
    hoi_logits, obj_logits = rng.normal(size=(b, n, k_hois)), rng.normal(size=(b, n, o + 1))
    boxes = rng.uniform(0.2, 0.6, (b, n, 4))
    hoi_to_obj = np.array([0, 1, 1, 2, 3])
    bonus = rng.uniform(0.5, 0.6, (b, k_hois))
    out = scoring.hico_topk(*(jnp.asarray(x, jnp.float32) for x in (
        hoi_logits, obj_logits, boxes, boxes)), jnp.full((b, 2), 100), jnp.asarray(hoi_to_obj),
        k=4, hoi_bonus=jnp.asarray(bonus, jnp.float32))
    sig = lambda x: 1 / (1 + np.exp(-x))
    scores = sig(hoi_logits) + bonus[:, None, :] + sig(obj_logits)[..., hoi_to_obj] ** 2
    flat = scores.reshape(b, -1)
    expected = np.sort(flat, axis=1)[:, ::-1][:, :4]
    np.testing.assert_allclose(np.asarray(out["scores"]), expected, rtol=1e-6)
    picked = flat[np.arange(b)[:, None], np.asarray(out["query_ids"]) * k_hois
                  + np.asarray(out["hoi_ids"])]
    np.testing.assert_allclose(picked, expected, rtol=1e-6)


def test_select_variant_renames_the_ranked_keys_and_keeps_the_boxes():
    p = {"scores": np.array([3.0]), "hoi_ids": np.array([1]), "query_ids": np.array([0]),
         "sub_xyxy": np.zeros((1, 4)), "obj_xyxy": np.ones((1, 4)),
         "scores@tfe10": np.array([4.0]), "hoi_ids@tfe10": np.array([2]),
         "query_ids@tfe10": np.array([0])}
    base, = inference.select_variant([p], 0)
    assert sorted(base) == ["hoi_ids", "obj_xyxy", "query_ids", "scores", "sub_xyxy"]
    assert base["scores"][0] == 3.0
    enhanced, = inference.select_variant([p], 10)
    assert sorted(enhanced) == sorted(base)
    assert (enhanced["scores"][0], enhanced["hoi_ids"][0]) == (4.0, 2)
    assert enhanced["obj_xyxy"] is p["obj_xyxy"]
    with pytest.raises(KeyError, match="k=20"):
        inference.select_variant([p], 20)
