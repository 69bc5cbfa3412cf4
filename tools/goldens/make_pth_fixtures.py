"""Writes the tiny `.pth` fixtures of tests/test_weights_import.py with real PyTorch (run once).

    /tmp/torch311/bin/python tools/goldens/make_pth_fixtures.py [--out tests/fixtures/pth]

Needs torch (the project itself never imports it). Writes:
- `wrapped_zip.pth`: `{'model': OrderedDict, 'epoch': 3, 'args': argparse.Namespace, 'optimizer':
  {...}}` in the zip format (torch >= 1.6, the default).
- `wrapped_legacy.pth`: the same object with `_use_new_zipfile_serialization=False` (the
  sequential-pickle format of torch < 1.6, e.g. the official DETR checkpoints).
- `bare_zip.pth`: the state dict alone (no wrapper), zip format, with a non-default top folder.
- `expected.npz`: every state-dict entry as a numpy array (bfloat16 stored as float32, which is
  exact), plus `meta.json` with the non-tensor entries.
- `detr_tiny_legacy.pth` (legacy format, as the official DETR file) and `hoiclip_tiny_zip.pth`
  (zip, `{'model', 'optimizer', 'epoch', 'args'}` as the reference's training checkpoints, CLIP in
  float16): a few modules with the reference key names at toy sizes, for the end-to-end tests of
  `load_detr` / `load_hoiclip`; `tiny_expected.npz` holds their state dicts (key -> array).
- `layouts.pth` + `layouts_io.npz`: a torch `nn.MultiheadAttention` (with a key padding mask), a
  `Conv2d` and a `Linear` with their inputs and outputs, so that the tests check that the
  converted weights compute what PyTorch computes (q/k/v split, transposes, OIHW -> HWIO).
The state dict covers float32/float16/bfloat16/float64/int64/int32/uint8/bool, a 0-d tensor, an
empty tensor, and views that share a storage: a transpose (non-contiguous) and a slice with a
storage offset.
"""
import argparse
import collections
import io
import json
import os
import zipfile

import numpy as np
import torch


def state_dict() -> collections.OrderedDict:
    """Small tensors of several dtypes and layouts, fixed values."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, generator=gen)
    sd = collections.OrderedDict()
    sd["layer.weight"] = base                              # contiguous float32
    sd["layer.weight_t"] = base.t()                        # transpose: strides (1, 4)
    sd["layer.weight_slice"] = base[1:, 1:3]               # offset 5, strides (4, 1)
    sd["layer.bias"] = torch.randn(4, generator=gen).half()
    sd["norm.weight_bf16"] = torch.randn(5, generator=gen).to(torch.bfloat16)
    sd["double"] = torch.randn(2, 2, generator=gen).double()
    sd["counter"] = torch.tensor(7, dtype=torch.int64)     # 0-d tensor
    sd["indices"] = torch.arange(6, dtype=torch.int64).reshape(2, 3)[:, ::2]  # stride (3, 2)
    sd["int32"] = torch.tensor([-3, 0, 2 ** 30], dtype=torch.int32)
    sd["bytes"] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    sd["mask"] = torch.tensor([True, False, True])
    sd["empty"] = torch.zeros(0, 3)
    sd["conv.weight"] = torch.randn(2, 3, 1, 2, generator=gen)  # OIHW
    return sd


def wrapped(sd) -> dict:
    """A training checkpoint as the reference saves it (extras that a reader must skip)."""
    args = argparse.Namespace(lr=1e-4, backbone="resnet50", dims=[1, 2], use_nms=True)
    optimizer = {"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.ones(2, 2)}},
                 "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]}
    return {"model": sd, "epoch": 3, "args": args, "optimizer": optimizer}


def detr_tiny() -> collections.OrderedDict:
    """DETR key names (detr_r50_state_dict.json), toy sizes: width 4, 6 input channels."""
    gen = torch.Generator().manual_seed(1)
    r = lambda *shape: torch.randn(*shape, generator=gen)
    sd = collections.OrderedDict()
    sd["backbone.0.body.conv1.weight"] = r(8, 3, 7, 7)
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"backbone.0.body.layer1.0.downsample.1.{name}"] = r(8)
    sd["input_proj.weight"], sd["input_proj.bias"] = r(4, 6, 1, 1), r(4)
    attn = "transformer.encoder.layers.0.self_attn"
    sd[f"{attn}.in_proj_weight"], sd[f"{attn}.in_proj_bias"] = r(12, 4), r(12)
    sd[f"{attn}.out_proj.weight"], sd[f"{attn}.out_proj.bias"] = r(4, 4), r(4)
    for layer in (0, 1):
        sd[f"transformer.decoder.layers.{layer}.norm1.weight"] = r(4)
    sd["transformer.decoder.norm.weight"] = r(4)
    sd["class_embed.weight"], sd["class_embed.bias"] = r(92, 4), r(92)
    sd["bbox_embed.layers.0.weight"], sd["bbox_embed.layers.0.bias"] = r(4, 4), r(4)
    sd["query_embed.weight"] = r(10, 4)
    return sd


def hoiclip_tiny() -> collections.OrderedDict:
    """HOICLIP key names (hoiclip_state_dict.json), toy sizes; CLIP float16 as when trained."""
    gen = torch.Generator().manual_seed(2)
    r = lambda *shape: torch.randn(*shape, generator=gen)
    sd = collections.OrderedDict()
    sd["logit_scale"] = torch.tensor(2.5)
    sd["verb2hoi_proj"] = torch.zeros(3, 5)
    fusion = "transformer.clip_interaction_decoder.layers.0.self_attn"
    sd[f"{fusion}.in_proj_weight"], sd[f"{fusion}.in_proj_bias"] = r(18, 6), r(18)
    sd["transformer.clip_interaction_decoder.layers.0.norm4.weight"] = r(6)
    sd["hoi_class_fc.0.weight"] = r(3, 4)
    sd["visual_projection.weight"], sd["visual_projection.bias"] = r(5, 3), r(5)
    sd["clip_model.visual.proj"] = r(6, 3).half()
    sd["clip_model.visual.conv1.weight"] = r(6, 3, 2, 2).half()
    return sd


def layouts():
    """(state dict, {input/output name: array}) of three torch modules on fixed inputs."""
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(8, 2)
    torch.nn.init.normal_(mha.in_proj_bias)  # torch starts it at zero: make it count
    conv = torch.nn.Conv2d(3, 4, (3, 2))
    linear = torch.nn.Linear(5, 6)
    query, key = torch.randn(3, 2, 8), torch.randn(4, 2, 8)  # [L, B, D], torch's layout
    padding = torch.tensor([[False, False, True, True], [False, False, False, False]])
    image, x = torch.randn(2, 3, 5, 6), torch.randn(7, 5)
    with torch.no_grad():
        attended = mha(query, key, key, key_padding_mask=padding)[0]
        io = {"mha_query": query.transpose(0, 1), "mha_key": key.transpose(0, 1),
              "mha_key_mask": ~padding, "mha_out": attended.transpose(0, 1),
              "conv_in": image.permute(0, 2, 3, 1), "conv_out": conv(image).permute(0, 2, 3, 1),
              "linear_in": x, "linear_out": linear(x)}
    state = collections.OrderedDict()
    for prefix, module in (("mha", mha), ("conv", conv), ("linear", linear)):
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return state, {k: v.numpy() for k, v in io.items()}


def expected_arrays(sd) -> dict:
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()}


def save_zip_with_folder(obj, path: str, folder: str):
    """torch.save's zip format, with the top folder renamed (torch names it after the file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            name = folder + "/" + info.filename.split("/", 1)[1]
            dst.writestr(zipfile.ZipInfo(name, info.date_time), src.read(info.filename))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "pth"))
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    sd = state_dict()
    assert not sd["layer.weight_t"].is_contiguous()
    assert sd["layer.weight_slice"].storage_offset() == 5
    torch.save(wrapped(sd), os.path.join(out, "wrapped_zip.pth"))
    torch.save(wrapped(sd), os.path.join(out, "wrapped_legacy.pth"),
               _use_new_zipfile_serialization=False)
    save_zip_with_folder(sd, os.path.join(out, "bare_zip.pth"), "some_other_name")
    np.savez(os.path.join(out, "expected.npz"), **expected_arrays(sd))
    detr, hoiclip = detr_tiny(), hoiclip_tiny()
    torch.save({"model": detr}, os.path.join(out, "detr_tiny_legacy.pth"),
               _use_new_zipfile_serialization=False)
    hoiclip_ckpt = wrapped(hoiclip)
    torch.save(hoiclip_ckpt, os.path.join(out, "hoiclip_tiny_zip.pth"))
    np.savez(os.path.join(out, "tiny_expected.npz"), **expected_arrays(detr),
             **expected_arrays(hoiclip))
    state, io = layouts()
    torch.save({"model": state}, os.path.join(out, "layouts.pth"))
    np.savez(os.path.join(out, "layouts_io.npz"), **io)
    meta = {"epoch": 3, "args": vars(wrapped(sd)["args"]), "torch": torch.__version__,
            "dtypes": {k: str(v.dtype).replace("torch.", "") for k, v in sd.items()}}
    with open(os.path.join(out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    # The files load back with torch itself (sanity check of this script).
    for name in ("wrapped_zip.pth", "wrapped_legacy.pth"):
        loaded = torch.load(os.path.join(out, name), weights_only=False)["model"]
        assert all(torch.equal(loaded[k], v) for k, v in sd.items()), name
    print("wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
