"""The initial parameters: random init plus the classifiers built from CLIP's text tower.

    model = hoiclip.build_model(config.model, tables)
    params = classifiers.init_params(model, jax.random.PRNGKey(0), config, tables)

The HOI and object classifiers are the CLIP text embeddings of the class prompts (§1.4, §1.6),
from the text tower of `params['clip']` (pretrained when config.model.clip.weights is set) or
from the file of `python -m hoiclip_jax.tools.text_embeddings`; the verb classifier is E_v
(`verb_features.verb_embeddings`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.models import hoiclip
from hoiclip_jax.models.attention import l2_normalize
from hoiclip_jax.weights import clip as clip_weights
from hoiclip_jax.weights import prompts as prompt_files
from hoiclip_jax.weights import verb_features
from hoiclip_jax.weights.tokenizer import build_tokenizer


def text_embeddings(model: hoiclip.HOICLIP, params: dict, tokenizer, prompts,
                    center: bool = False) -> jax.Array:
    """L2-normalised CLIP text embeddings [n, E] of `prompts`.

    With `center`, the mean embedding of the set is removed before normalising. A randomly
    initialised text tower (the demo's) maps prompts that share all but one word to nearly the
    same direction (mean cosine 0.91 for the synthetic HOI prompts), which makes the frozen
    classifiers almost blind; centring keeps what distinguishes them. Real CLIP: off.
    """
    tokens = tokenizer(list(prompts))
    # The tower is causal and pools at the EOT token, so positions after the last EOT cannot
    # change the result: drop them (prompts are far shorter than the 77-token context).
    length = int(np.argmax(tokens, axis=1).max()) + 1
    encode = jax.jit(lambda p, t: model.apply({"params": p}, t, method=hoiclip.HOICLIP.encode_text))
    embeddings = l2_normalize(encode(params, jnp.asarray(tokens[:, :length])))
    if center:
        embeddings = l2_normalize(embeddings - embeddings.mean(axis=0, keepdims=True))
    return embeddings


def prompt_embeddings(model: hoiclip.HOICLIP, params: dict, config, tables):
    """(hoi_text [K, E], obj_text [O + 1, E]): the file config.model.text_embeddings if set
    (written by `python -m hoiclip_jax.tools.text_embeddings`), else the text tower of
    `params['clip']` on the class-table prompts."""
    m = config.model
    if m.text_embeddings:
        if m.center_text_embeddings:
            raise ValueError(f"config.model.text_embeddings={m.text_embeddings!r} holds the final "
                             "classifier embeddings; center_text_embeddings (for a random CLIP "
                             "tower) must be False with it")
        hoi, obj = prompt_files.load_prompt_embeddings(m.text_embeddings, tables,
                                                       m.clip.embed_dim)
        return jnp.asarray(hoi), jnp.asarray(obj)
    tokenizer = build_tokenizer(m.clip, list(tables.hoi_prompts) + list(tables.object_prompts))
    center = m.center_text_embeddings
    return (text_embeddings(model, params, tokenizer, tables.hoi_prompts, center),
            text_embeddings(model, params, tokenizer, tables.object_prompts, center))


def init_params(model: hoiclip.HOICLIP, rng, config, tables) -> dict:
    """Random init plus the text-derived classifiers (§1.4, §1.6).

    With config.model.clip.weights (a Hugging Face CLIP folder), params['clip'] is read from it
    and the prompts are tokenised with its BPE vocabulary; with config.model.text_embeddings the
    prompt embeddings come from that file instead of the text tower.

    hoi_visual_projection/kernel and obj_visual_projection/kernel = the normalised CLIP text
    embeddings of the HOI / object prompts (transposed to [E, K] / [E, O+1]); their biases stay
    random (frozen by the optimizer, as in the reference) unless
    config.model.classifier_random_bias is False, which zeroes them; verb_projection/kernel =
    E_v^T.

    The params are float32 and do not depend on `model.dtype`: initialisation (the text tower
    that builds the classifiers included) runs on a float32 copy of the model, so a bfloat16 run
    starts from exactly the parameters of a float32 run.

    Returns:
      the params dict (the 'params' collection).
    """
    model = model.clone(dtype=jnp.float32)
    params = dict(hoiclip.random_params(model, rng, config.dataset))
    if config.model.clip.weights:
        params["clip"] = clip_weights.params_for_config(config.model.clip, params["clip"])
    hoi_text, obj_text = prompt_embeddings(model, params, config, tables)
    kernels = {"hoi_visual_projection": hoi_text.T, "obj_visual_projection": obj_text.T,
               "verb_projection": verb_features.verb_embeddings(config.model, tables, hoi_text).T}
    for name, kernel in kernels.items():
        old = params[name]["kernel"]
        if kernel.shape != old.shape:
            raise ValueError(f"{name}/kernel: text-derived shape {kernel.shape} != {old.shape}")
        params[name] = {**params[name], "kernel": kernel.astype(old.dtype)}
    if not config.model.classifier_random_bias:
        for name in ("hoi_visual_projection", "obj_visual_projection"):
            params[name] = {**params[name], "bias": jnp.zeros_like(params[name]["bias"])}
    return params
