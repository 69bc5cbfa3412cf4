"""HOICLIP on full HICO-Det (reference §1.1, §4): ResNet-50 + ViT-B/32, 64 queries, 90 epochs.

    python -m hoiclip_jax.train --config configs/hico.py --workdir runs/hico
Published (official protocol, with TFE k=10): 34.69 Full / 31.12 Rare / 35.74 Non-rare.
Pretrained DETR/CLIP weights come with issue 3; until then this config builds the full model.
"""
from configs import common


def get_config():
    return common.hoiclip_config("hico")
