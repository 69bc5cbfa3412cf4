"""Pictures of predicted interactions: human box, object box, a line between them, the label."""
import os

import numpy as np
from PIL import Image, ImageDraw

HUMAN_COLOR = (40, 120, 255)
OBJECT_COLOR = (255, 60, 60)
LINK_COLOR = (40, 200, 80)


def draw_triplets(image: Image.Image, triplets: list[dict], scale: int = 3) -> Image.Image:
    """Draws triplets on a copy of `image`, upscaled by `scale` so the labels stay readable.

    Args:
      image: the original RGB image.
      triplets: dicts with `sub_box`, `obj_box` (xyxy, pixels of `image`), `label` (str) and
        `score` (float), best first.
    """
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale),
                                         Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for t in triplets:
        sub = np.asarray(t["sub_box"], np.float64) * scale
        obj = np.asarray(t["obj_box"], np.float64) * scale
        draw.rectangle(sub.tolist(), outline=HUMAN_COLOR, width=2)
        draw.rectangle(obj.tolist(), outline=OBJECT_COLOR, width=2)
        centres = [((sub[0] + sub[2]) / 2, (sub[1] + sub[3]) / 2),
                   ((obj[0] + obj[2]) / 2, (obj[1] + obj[3]) / 2)]
        draw.line(centres, fill=LINK_COLOR, width=2)
        draw.text((sub[0] + 2, sub[1] + 2), f"{t['label']} {t['score']:.2f}", fill=(0, 0, 0))
    return canvas


def save_grid(pictures: list[Image.Image], path: str, columns: int = 3) -> str:
    """Tiles pictures (padded to the largest) into one PNG at `path`."""
    width = max(p.width for p in pictures)
    height = max(p.height for p in pictures)
    rows = -(-len(pictures) // columns)
    grid = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for i, picture in enumerate(pictures):
        grid.paste(picture, ((i % columns) * width, (i // columns) * height))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path
