"""HOICLIP on full HICO-Det (reference §1.1, §4): ResNet-50 + ViT-B/32, 64 queries, 90 epochs.

    python -m hoiclip_jax.train --config configs/hico.py --workdir runs/hico
Published (official protocol, with TFE k=10): 34.69 Full / 31.12 Rare / 35.74 Non-rare.
Needs params/clip-vit-base-patch32/ and params/detr-r50-e632da11.pth (README "Weights").
"""
from configs import common


def get_config():
    return common.hoiclip_config("hico")
