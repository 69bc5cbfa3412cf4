"""The HOICLIP model (reference §1): DETR instance branch + CLIP interaction branch.

    model = build_model(config.model, tables)
    params = classifiers.init_params(model, jax.random.PRNGKey(0), config, tables)  # weights/
    out = model.apply({'params': params}, image, pixel_mask, clip_image, train=True,
                      rngs={'dropout': key})

Top-level parameter names (config.optim.groups freezes by regex on them): `backbone`,
`input_proj`, `encoder`, `instance_decoder`, `query_embed_h`, `query_embed_o`, `pos_guided_embed`,
`hum_bbox_embed`, `obj_bbox_embed`, `obj_class_fc`, `obj_class_ln`, `obj_logit_scale`,
`obj_visual_projection`, `clip` (Hugging Face Flax layout), `interaction`, `logit_scale`,
`inter2verb`, `hoi_visual_projection`, `verb_projection`.

Initialisation (§1.8): transformer kernels (encoder, decoders, the interaction module) xavier
uniform, attention biases zero, other transformer biases PyTorch's default; the heads that live
outside the reference's transformer (box MLPs, inter2verb, obj_class_fc, input_proj and the two
text classifiers' biases) keep PyTorch's default Linear/Conv init U(+-1/sqrt(fan_in)); queries
N(0, 1), pos_guided_embed U[0, 1); backbone convs kaiming normal (fan_out), FrozenBN identity;
CLIP as documented in clip.py. `hoiclip_jax.weights.classifiers.init_params` then writes the
text-derived classifier kernels.
"""
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hoiclip_jax.models import remat
from hoiclip_jax.models.attention import (TORCH_DEFAULT_KERNEL, l2_normalize, layer_norm,
                                          torch_default_bias)
from hoiclip_jax.models.backbone import BackboneSpec, ResNet, downsample_mask
from hoiclip_jax.models.clip import CLIP, ClipSpec
from hoiclip_jax.models.conv import Conv
from hoiclip_jax.models.detr import Encoder, InstanceDecoder, sine_position_embedding
from hoiclip_jax.models.interaction import Q_INTER_MODES, InteractionDecoder


STANDARD_NORMAL = nn.initializers.normal(1.0)
# The collection of the features sown for analysis (`hoiclip_jax.analysis.Predictor`); only
# filled when `apply` is given `mutable=[INTERMEDIATES]`, else `sow` does nothing:
#   clip_tokens [B, T, W]    CLIP ln_post of all tokens (V_s, §1.5 step 3)
#   interaction/queries [B, N, W]   Q_inter (§1.5 step 2)
#   o_inter [L, B, N, E]     O_inter, the interaction decoder's output in CLIP space (§1.5 step 5)
#   verb_logits [L, B, N, V] S_v, the verb-adapter logits before verb2hoi (§1.6)
INTERMEDIATES = "intermediates"
# The heads (box MLPs, object and HOI classifiers, verb adapter) always compute in float32: they
# are a tiny share of the FLOPs (a few [L, B, 2N, D] matmuls) and feed the losses and the matcher
# directly. In bfloat16 (8-bit mantissa) the sigmoid boxes would be rounded to steps of 2e-3 to
# 4e-3 (1.5-3 pixels at 800) and the cosine logits, scaled by exp(logit_scale) ~ 14, to ~0.03.
HEAD_DTYPE = jnp.float32


def _torch_dense(features: int, fan_in: int, use_bias: bool = True, **kwargs) -> nn.Dense:
    """nn.Linear with PyTorch's default init."""
    return nn.Dense(features, use_bias=use_bias, kernel_init=TORCH_DEFAULT_KERNEL,
                    bias_init=torch_default_bias(fan_in), **kwargs)


class MLP(nn.Module):
    """DETR's MLP: `num_layers` Linear layers (named layer0, layer1, ...) with ReLU between."""
    hidden_dim: int
    out_dim: int
    num_layers: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        """x: [..., Din] -> [..., out_dim]."""
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            x = _torch_dense(self.out_dim if last else self.hidden_dim, x.shape[-1],
                             dtype=self.dtype, name=f"layer{i}")(x)
            x = x if last else nn.relu(x)
        return x


class HOICLIP(nn.Module):
    """HOICLIP; built by `build_model` from plain hashable values.

    Attributes:
      backbone_spec, clip_spec: sizes of the ResNet and of CLIP.
      hidden_dim ... num_queries: DETR sizes (config.model; num_queries = N per branch).
      inter_nheads, inter_dim_feedforward, q_inter: the CLIP interaction decoder.
      verb_weight: weight of the verb-adapter logits in the HOI logits.
      logit_scale_init: initial logit_scale and obj_logit_scale (ln(1/0.07)).
      num_hois, num_obj_logits, num_verbs: K, O + 1, V.
      verb2hoi_entries: the (verb, HOI column) cells that are 1 in the fixed [V, K] verb2hoi
        matrix (`verb2hoi_entries` below).
      encoder_input_pos: also add the sine positions to the encoder input (not in the reference;
        see config.model.encoder_input_pos).
      train_hois: zero-shot (§1.6, §3.4): the HOI columns trained on (the seen classes,
        ascending); empty: all K. Parameters do not depend on it (the classifier always holds
        all K classes); only `hoi_logits` does.
      remat: a jax.checkpoint policy name for the backbone stages and the transformer layers,
        or 'none' (models/remat.py; config.model.remat).
      mask_padded_memory: the interaction decoder ignores padded DETR memory positions
        (config.model.mask_padded_memory; the reference attends to them).
      dtype: computation dtype of the backbone, the transformers and the CLIP towers. Params
        are float32 whatever it is (flax `param_dtype`); norm statistics, attention softmax and
        the sine positions are float32 inside those modules; the heads (`HEAD_DTYPE`) and the
        outputs are float32.
    """
    backbone_spec: BackboneSpec
    clip_spec: ClipSpec
    hidden_dim: int
    nheads: int
    enc_layers: int
    dec_layers: int
    inter_dec_layers: int
    dim_feedforward: int
    dropout: float
    num_queries: int
    inter_nheads: int
    inter_dim_feedforward: int
    q_inter: str
    verb_weight: float
    logit_scale_init: float
    num_hois: int
    num_obj_logits: int
    num_verbs: int
    verb2hoi_entries: tuple[tuple[int, int], ...]
    encoder_input_pos: bool = False
    train_hois: tuple[int, ...] = ()
    dtype: Any = jnp.float32
    remat: str = "none"
    mask_padded_memory: bool = False

    def setup(self):
        d, e, dt = self.hidden_dim, self.clip_spec.embed_dim, self.dtype
        scale_init = nn.initializers.constant(self.logit_scale_init)
        self.backbone = ResNet(self.backbone_spec, dt, self.remat)
        # A 1x1 convolution with the backbone's matrix-product backward pass (models/conv.py):
        # XLA's own made a channel-major copy of the backbone output for the filter gradient.
        self.input_proj = Conv(d, 1, 1, 0, TORCH_DEFAULT_KERNEL, dt,
                               bias_init=torch_default_bias(self.backbone_spec.out_channels))
        detr = dict(num_heads=self.nheads, dim_feedforward=self.dim_feedforward,
                    dropout=self.dropout, dtype=dt, remat=self.remat)
        self.encoder = Encoder(self.enc_layers, **detr)
        self.instance_decoder = InstanceDecoder(self.dec_layers, **detr)
        # Not loaded from DETR in the reference: PyTorch's nn.Embedding init N(0, 1).
        self.query_embed_h = nn.Embed(self.num_queries, d, embedding_init=STANDARD_NORMAL)
        self.query_embed_o = nn.Embed(self.num_queries, d, embedding_init=STANDARD_NORMAL)
        self.pos_guided_embed = nn.Embed(self.num_queries, d,
                                         embedding_init=nn.initializers.uniform(1.0))
        self.hum_bbox_embed = MLP(d, 4, 3, HEAD_DTYPE)
        self.obj_bbox_embed = MLP(d, 4, 3, HEAD_DTYPE)
        self.obj_class_fc = _torch_dense(e, d, dtype=HEAD_DTYPE)
        self.obj_class_ln = layer_norm(dtype=HEAD_DTYPE)
        self.obj_logit_scale = self.param("obj_logit_scale", scale_init, ())
        self.obj_visual_projection = _torch_dense(self.num_obj_logits, e, dtype=HEAD_DTYPE)
        self.clip = CLIP(self.clip_spec, self.logit_scale_init, dt)
        self.interaction = InteractionDecoder(
                self.clip_spec.vision_width, self.inter_dec_layers, self.inter_nheads,
                self.inter_dim_feedforward, self.dropout, self.q_inter, dt, self.remat)
        self.logit_scale = self.param("logit_scale", scale_init, ())
        # The reference's hidden width is clip_embed_dim // 2 (512 -> 256 -> 256 -> 512, §1.6);
        # it equals DETR's hidden_dim only at the published sizes.
        self.inter2verb = MLP(e // 2, e, 3, HEAD_DTYPE)
        self.hoi_visual_projection = _torch_dense(self.num_hois, e, dtype=HEAD_DTYPE)
        self.verb_projection = _torch_dense(self.num_verbs, e, use_bias=False, dtype=HEAD_DTYPE)

    def __call__(self, image, pixel_mask, clip_image, train: bool = False):
        """Runs HOICLIP.

        Args:
          image: [B, H, W, 3] ImageNet-normalised, padded bottom/right.
          pixel_mask: [B, H, W] bool, True on real pixels.
          clip_image: [B, C, C, 3] the CLIP view.
          train: enables dropout (needs rngs={'dropout': key}); a zero-shot model
            (`train_hois`) then gives the K_train seen HOI columns only (`hoi_logits`).

        Returns:
          dict (docs/design.md): hoi_logits [L, B, N, K] ([L, B, N, K_train] when training a
          zero-shot model), obj_logits [L, B, N, O+1], sub_boxes and
          obj_boxes [L, B, N, 4] (sigmoid cxcywh, normalised), clip_cls [B, E] (L2-normalised),
          clip_visual [B, T, E].
        """
        deterministic = not train
        if self.is_initializing():
            # The forward pass never runs the text tower; touch it so that its params exist.
            self.clip.encode_text(jnp.zeros((1, self.clip_spec.context_length), jnp.int32))
        memory, memory_mask, ins_hs = self.detect(image, pixel_mask, deterministic)
        h_hs, o_hs = ins_hs[:, :, :self.num_queries], ins_hs[:, :, self.num_queries:]
        clip_embeds, clip_tokens = self.clip.encode_image(clip_image)
        self.sow(INTERMEDIATES, "clip_tokens", clip_tokens)
        inter_hs = self.interaction(h_hs[-1], o_hs[-1], memory, clip_tokens, deterministic,
                                    memory_mask if self.mask_padded_memory else None)
        # The frozen CLIP visual projection maps the decoder output into the joint space
        # (§1.5 step 5).
        outputs = {
            "hoi_logits": self.hoi_logits(self.clip.project_image(inter_hs), train),
            "obj_logits": self.obj_logits(o_hs),
            "sub_boxes": jax.nn.sigmoid(self.hum_bbox_embed(h_hs)),
            "obj_boxes": jax.nn.sigmoid(self.obj_bbox_embed(o_hs)),
            "clip_cls": l2_normalize(clip_embeds),
            "clip_visual": self.clip.project_image(clip_tokens),
        }
        return {k: v.astype(jnp.float32) for k, v in outputs.items()}

    def detect(self, image, pixel_mask, deterministic: bool):
        """Backbone, encoder and instance decoder.

        Returns:
          memory: [B, S, D] encoder output (S = h * w feature positions).
          memory_mask: [B, S] bool, True on the positions of real pixels.
          ins_hs: [L, B, 2N, D] instance-decoder outputs (humans, then objects).
        """
        feats = self.backbone(image)
        mask = downsample_mask(pixel_mask, feats.shape[1:3])
        # Built in float32: in bfloat16 the normalised positions (up to 2 pi, steps of 2 pi / w)
        # would be rounded to ~0.03 before sin/cos. Cast only to be added to the activations.
        pos = sine_position_embedding(mask, self.hidden_dim // 2).astype(self.dtype)
        src = self.input_proj(feats)
        batch = src.shape[0]
        flat = lambda x: x.reshape(batch, -1, x.shape[-1])
        src, pos, mask = flat(src), flat(pos), mask.reshape(batch, -1)
        if self.encoder_input_pos:
            # DETR adds positions to queries and keys only, so the values (what the box heads
            # read) carry position only as far as the backbone features encode it.
            src = src + pos
        memory = self.encoder(src, pos, mask, deterministic)
        queries = jnp.arange(self.num_queries)
        guide = self.pos_guided_embed(queries)
        query_pos = jnp.concatenate([self.query_embed_h(queries) + guide,
                                     self.query_embed_o(queries) + guide])
        query_pos = jnp.broadcast_to(query_pos, (batch,) + query_pos.shape).astype(self.dtype)
        tgt = jnp.zeros_like(query_pos)
        ins_hs = self.instance_decoder(tgt, memory, query_pos, pos, mask, deterministic)
        return memory, mask, ins_hs

    def obj_logits(self, o_hs):
        """o_hs [L, B, N, D] -> [L, B, N, O+1]: exp(s_o) * proj(norm(LN(fc(o)))) (§1.4)."""
        x = l2_normalize(self.obj_class_ln(self.obj_class_fc(o_hs)))
        return jnp.exp(self.obj_logit_scale) * self.obj_visual_projection(x)

    def hoi_logits(self, o_inter, train: bool = False):
        """O_inter [L, B, N, E] -> S_inter + verb_weight * S_v @ verb2hoi, [L, B, N, K] (§1.6).

        A zero-shot model (`train_hois` set) follows the reference's `--del_unseen`: training
        gives the K_train seen columns only ([L, B, N, K_train]: the classifier's kernel and bias
        columns and the verb2hoi columns of `train_hois`, in that order), evaluation all K
        columns with the text kernel alone, no bias, and the full verb2hoi (the reference's
        `eval_visual_projection` and `verb2hoi_proj_eval`).
        """
        scale = jnp.exp(self.logit_scale)
        x = l2_normalize(o_inter)
        s_inter = self.hoi_visual_projection(x)  # [L, B, N, K], bias included
        s_verb = scale * self.verb_projection(l2_normalize(self.inter2verb(o_inter)))
        self.sow(INTERMEDIATES, "o_inter", o_inter)
        self.sow(INTERMEDIATES, "verb_logits", s_verb)
        verb2hoi = np.zeros((self.num_verbs, self.num_hois), np.float32)  # a constant
        verb2hoi[tuple(np.array(self.verb2hoi_entries).T)] = 1.0
        if self.train_hois and train:
            # Taking output columns equals taking kernel and bias columns (each logit is its
            # own column's dot product plus bias), and the text-derived parameters keep all K
            # classes, so checkpoints do not depend on train vs. evaluation.
            columns = np.asarray(self.train_hois)
            s_inter, verb2hoi = s_inter[..., columns], verb2hoi[:, columns]
        elif self.train_hois:
            # XLA drops the unused biased product above.
            kernel = self.hoi_visual_projection.variables["params"]["kernel"]
            s_inter = jnp.matmul(x.astype(HEAD_DTYPE), kernel.astype(HEAD_DTYPE))
        return scale * s_inter + self.verb_weight * s_verb @ jnp.asarray(verb2hoi, s_verb.dtype)

    def encode_text(self, token_ids):
        """CLIP text embeddings (not normalised) [n, E] of token_ids [n, T]."""
        return self.clip.encode_text(token_ids)


def verb2hoi_entries(tables, vcoco_bug: bool) -> tuple[tuple[int, int], ...]:
    """(verb, column) cells set to 1 in the [V, K] verb2hoi matrix (§1.6).

    Intended: (v, k) for every HOI class k = (v, o). With `vcoco_bug` (reference V-COCO code,
    which produced the published V-COCO numbers): (v, o), i.e. the column is the object index,
    so the verb logits land on the wrong HOI columns (only columns 0..O-1 receive any).
    """
    columns = tables.hoi_to_obj if vcoco_bug else np.arange(tables.num_hois)
    return tuple(sorted({(int(v), int(c)) for v, c in zip(tables.hoi_to_verb, columns)}))


def train_hoi_columns(tables, zero_shot: str) -> tuple[int, ...]:
    """The HOI columns a zero-shot model trains on: the seen classes of setting `zero_shot`, in
    ascending index order (480 / 480 / 500 / 516 of HICO-Det's 600 for rare_first /
    non_rare_first / unseen_object / unseen_verb, §3.4); () for 'none' (all classes)."""
    if zero_shot == "none":
        return ()
    unseen = set(int(k) for k in tables.unseen_hois(zero_shot))
    return tuple(k for k in range(tables.num_hois) if k not in unseen)


def build_model(model_config, tables) -> HOICLIP:
    """Builds HOICLIP for config.model and the class tables (K, O + 1, V, verb2hoi, and the
    training columns of the zero-shot setting `config.model.zero_shot`, which the configs link
    to config.dataset.zero_shot)."""
    m = model_config
    if m.vcoco_verb2hoi_bug and tables.name != "vcoco":
        raise ValueError(f"config.model.vcoco_verb2hoi_bug=True reproduces a bug of the V-COCO "
                         f"code path only; the class tables are '{tables.name}'")
    if m.dec_layers != m.inter_dec_layers:
        raise ValueError(f"config.model.dec_layers={m.dec_layers} != inter_dec_layers="
                         f"{m.inter_dec_layers}: the aux outputs pair the layers one to one")
    remat.check_policy(m.remat)
    if m.q_inter not in Q_INTER_MODES:
        raise ValueError(f"config.model.q_inter={m.q_inter!r}: expected one of {Q_INTER_MODES}")
    if len(tables.object_prompts) != tables.num_objects + 1:
        raise ValueError(f"class tables '{tables.name}': {len(tables.object_prompts)} object "
                         f"prompts for {tables.num_objects} objects (+1 for 'nothing' expected)")
    b = m.backbone
    clip_fields = [f.name for f in dataclasses.fields(ClipSpec)]
    return HOICLIP(
            backbone_spec=BackboneSpec(b.block, tuple(b.stage_sizes), b.width, b.frozen_bn_eps,
                                       b.norm),
            clip_spec=ClipSpec(**{name: m.clip[name] for name in clip_fields}),
            hidden_dim=m.hidden_dim, nheads=m.nheads, enc_layers=m.enc_layers,
            dec_layers=m.dec_layers, inter_dec_layers=m.inter_dec_layers,
            dim_feedforward=m.dim_feedforward, dropout=m.dropout, num_queries=m.num_queries,
            inter_nheads=m.inter_nheads, inter_dim_feedforward=m.inter_dim_feedforward,
            q_inter=m.q_inter, verb_weight=float(m.verb_weight),
            logit_scale_init=float(m.logit_scale_init), num_hois=tables.num_hois,
            num_obj_logits=tables.num_objects + 1, num_verbs=tables.num_verbs,
            verb2hoi_entries=verb2hoi_entries(tables, bool(m.vcoco_verb2hoi_bug)),
            encoder_input_pos=bool(m.encoder_input_pos),
            train_hois=train_hoi_columns(tables, m.zero_shot), dtype=jnp.dtype(m.dtype),
            remat=str(m.remat), mask_padded_memory=bool(m.mask_padded_memory))


def dummy_inputs(dataset_config, batch_size: int = 1, canvas=None):
    """Zero (image, pixel_mask, clip_image) of the config's static shapes (DETR canvas
    `canvas` instead of config's when given)."""
    h, w = canvas or dataset_config.canvas
    c = dataset_config.clip_image_size
    return (jnp.zeros((batch_size, h, w, 3), jnp.float32), jnp.ones((batch_size, h, w), bool),
            jnp.zeros((batch_size, c, c, 3), jnp.float32))


# DETR canvas of the dummy inputs that create the parameters. No parameter shape depends on the
# image size (the sine positions have none), and flax draws each parameter from its module path,
# so a small canvas gives the same parameters as the config's (1333x1333 for the real configs)
# at a fraction of the init's time and memory. The CLIP view keeps its size: ViT's position
# embeddings depend on it.
_INIT_CANVAS = (64, 64)


def _init_variables(model: HOICLIP, rng, dataset_config) -> dict:
    canvas = tuple(min(s, c) for s, c in zip(dataset_config.canvas, _INIT_CANVAS))
    return model.init(rng, *dummy_inputs(dataset_config, canvas=canvas), train=False)["params"]


def random_params(model: HOICLIP, rng, dataset_config) -> dict:
    """`model.init` params (random; classifier kernels not yet from text).

    Compiled at LLVM -O0: XLA:CPU spends ~0.1-0.5 s optimising each random-init kernel (there
    are hundreds) and this runs once; -O0 makes the compile several times faster.
    """
    init = jax.jit(functools.partial(_init_variables, model, dataset_config=dataset_config),
                   compiler_options={"xla_backend_optimization_level": 0})
    return init(rng)


def abstract_params(model: HOICLIP, dataset_config) -> dict:
    """Param shapes (jax.ShapeDtypeStruct tree) without allocating or computing anything."""
    return jax.eval_shape(functools.partial(_init_variables, model, dataset_config=dataset_config),
                          jax.random.PRNGKey(0))
