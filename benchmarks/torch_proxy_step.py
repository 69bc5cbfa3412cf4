r"""A PyTorch model of HOICLIP's layer sizes, timed like `train_step.py`: the same-machine
yardstick of the train-step benchmark.

    python3.11 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 scipy
    /tmp/torch-venv/bin/python benchmarks/torch_proxy_step.py --batch 2 --image-size 512

Not part of the project's dependencies or tests. Written for this benchmark from the layer sizes of
hoiclip_jax/lib/config_base.py (not from the original code): ResNet-50 with frozen batch norm (stem
and layer1 frozen), 1x1 input projection to 256, 6 post-norm encoder layers, a 3-layer decoder over
64 + 64 queries, the frozen CLIP ViT-B/32 image tower (12 pre-norm layers of width 768, no
gradient), the 768-wide interaction decoder (3 fusion layers: self-attention, one shared
cross-attention to the CLIP tokens and to the projected memory, FFN 2048), the box MLPs, object and
HOI cosine classifiers and the verb adapter; a Hungarian matching on the host (scipy) and focal, CE,
L1 and GIoU losses on every decoder layer; AdamW (backbone 1e-5, rest 1e-4, weight decay 1e-4) after
clip_grad_norm(0.1); dropout 0.1. It has the reference's FLOPs and kernel mix, so it measures what
PyTorch's CPU kernels do with this network on this machine.
"""
import argparse
import resource
import statistics
import sys
import time

import numpy as np
import scipy.optimize
import torch
from torch import nn
import torch.nn.functional as F


class FrozenBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0)):
            self.register_buffer(name, torch.full((c,), value))

    def forward(self, x):
        scale = self.weight * (self.var + 1e-5).rsqrt()
        return x * scale[None, :, None, None] + (self.bias - self.mean * scale)[None, :, None, None]


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, width, 1, bias=False), FrozenBN(width)
        self.c2, self.b2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), FrozenBN(width)
        self.c3, self.b3 = nn.Conv2d(width, 4 * width, 1, bias=False), FrozenBN(4 * width)
        self.down = None
        if stride != 1 or cin != 4 * width:
            self.down = nn.Sequential(nn.Conv2d(cin, 4 * width, 1, stride, bias=False),
                                      FrozenBN(4 * width))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        y = self.b3(self.c3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


def resnet50():
    layers, cin = [nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), FrozenBN(64),
                                 nn.ReLU(), nn.MaxPool2d(3, 2, 1))], 64
    for i, blocks in enumerate((3, 4, 6, 3)):
        width = 64 * 2 ** i
        stage = [Bottleneck(cin if j == 0 else 4 * width, width, (1 if i == 0 else 2)
                            if j == 0 else 1) for j in range(blocks)]
        layers.append(nn.Sequential(*stage))
        cin = 4 * width
    return nn.Sequential(*layers)


class PostNormLayer(nn.Module):
    """DETR encoder (cross=False) or decoder layer (cross=True), post-norm."""

    def __init__(self, d, heads, ff, cross):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, 0.1, batch_first=True)
        self.cross = nn.MultiheadAttention(d, heads, 0.1, batch_first=True) if cross else None
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(0.1), nn.Linear(ff, d))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3 if cross else 2))
        self.drop = nn.Dropout(0.1)

    def forward(self, x, pos, memory=None, memory_pos=None):
        q = x + pos
        x = self.norms[0](x + self.drop(self.self_attn(q, q, x, need_weights=False)[0]))
        if self.cross is not None:
            attended = self.cross(x + pos, memory + memory_pos, memory, need_weights=False)[0]
            x = self.norms[1](x + self.drop(attended))
        return self.norms[-1](x + self.drop(self.ff(x)))


class ClipLayer(nn.Module):
    def __init__(self, d=768, heads=12):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.fc1(self.ln2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


class ClipVision(nn.Module):
    def __init__(self, d=768):
        super().__init__()
        self.patch = nn.Conv2d(3, d, 32, 32, bias=False)
        self.cls, self.pos = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(50, d))
        self.pre, self.post = nn.LayerNorm(d), nn.LayerNorm(d)
        self.layers = nn.Sequential(*[ClipLayer() for _ in range(12)])
        self.proj = nn.Linear(d, 512, bias=False)

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1) + self.pos
        return self.post(self.layers(self.pre(x)))


class FusionLayer(nn.Module):
    def __init__(self, d=768, heads=8, ff=2048):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, 0.1, batch_first=True)
        self.cross = nn.MultiheadAttention(d, heads, 0.1, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Dropout(0.1), nn.Linear(ff, d))
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, clip_tokens, memory):
        x = self.n1(x + self.drop(self.self_attn(x, x, x, need_weights=False)[0]))
        a = self.n2(x + self.drop(self.cross(x, clip_tokens, clip_tokens, need_weights=False)[0]))
        b = self.n2(x + self.drop(self.cross(x, memory, memory, need_weights=False)[0]))
        x = a + b
        return self.n3(x + self.drop(self.ff(x)))


def mlp(din, hidden, dout):
    return nn.Sequential(nn.Linear(din, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, dout))


def sine_positions(mask, feats=128):
    y, x = mask.cumsum(1, dtype=torch.float32), mask.cumsum(2, dtype=torch.float32)
    y, x = y / (y[:, -1:] + 1e-6) * 2 * np.pi, x / (x[:, :, -1:] + 1e-6) * 2 * np.pi
    dim_t = 10000 ** (2 * (torch.arange(feats) // 2) / feats)
    out = []
    for e in (y, x):
        p = e[..., None] / dim_t
        out.append(torch.stack([p[..., 0::2].sin(), p[..., 1::2].cos()], -1).flatten(3))
    return torch.cat(out, -1).flatten(1, 2)


class HoiProxy(nn.Module):
    def __init__(self, n=64, hois=600, objects=81, verbs=117):
        super().__init__()
        self.backbone, self.proj = resnet50(), nn.Conv2d(2048, 256, 1)
        self.encoder = nn.ModuleList(PostNormLayer(256, 8, 2048, False) for _ in range(6))
        self.decoder = nn.ModuleList(PostNormLayer(256, 8, 2048, True) for _ in range(3))
        self.dec_norm = nn.LayerNorm(256)
        self.queries = nn.Parameter(torch.randn(2 * n, 256))
        self.clip = ClipVision()
        self.memory_proj, self.memory_norm = nn.Linear(256, 768), nn.LayerNorm(768)
        self.q_proj, self.q_norm = nn.Linear(256, 768), nn.LayerNorm(768)
        self.fusion = nn.ModuleList(FusionLayer() for _ in range(3))
        self.inter_norm = nn.LayerNorm(768)
        self.hum_box, self.obj_box = mlp(256, 256, 4), mlp(256, 256, 4)
        self.obj_fc, self.obj_ln = nn.Linear(256, 512), nn.LayerNorm(512)
        self.obj_cls, self.hoi_cls = nn.Linear(512, objects), nn.Linear(512, hois)
        self.inter2verb, self.verb_cls = mlp(512, 256, 512), nn.Linear(512, verbs, bias=False)
        self.register_buffer("verb2hoi", (torch.rand(verbs, hois) < 0.01).float())
        self.n = n

    def freeze(self):
        frozen = [self.backbone[0], self.backbone[1], self.clip, self.obj_cls, self.hoi_cls]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, image, mask, clip_image):
        feats = self.backbone(image)
        small = F.interpolate(mask[:, None].float(), feats.shape[-2:]).bool()[:, 0]
        pos, key_pad = sine_positions(small), ~small.flatten(1)
        src = self.proj(feats).flatten(2).transpose(1, 2)
        for layer in self.encoder:
            q = src + pos
            src = layer.norms[0](src + layer.drop(layer.self_attn(
                    q, q, src, key_padding_mask=key_pad, need_weights=False)[0]))
            src = layer.norms[1](src + layer.drop(layer.ff(src)))
        qpos = self.queries.expand(image.shape[0], -1, -1)
        tgt, hs = torch.zeros_like(qpos), []
        for layer in self.decoder:
            tgt = layer(tgt, qpos, src, pos)
            hs.append(self.dec_norm(tgt))
        hs = torch.stack(hs)
        h, o = hs[:, :, :self.n], hs[:, :, self.n:]
        with torch.no_grad():
            tokens = self.clip(clip_image)
        memory = self.memory_norm(self.memory_proj(src))
        x, inter = self.q_norm(self.q_proj((h[-1] + o[-1]) / 2)), []
        for layer in self.fusion:
            x = layer(x, tokens, memory)
            inter.append(self.inter_norm(x))
        inter = self.clip.proj(torch.stack(inter))
        verb = self.verb_cls(F.normalize(self.inter2verb(inter), dim=-1)) * 14.3
        hoi = self.hoi_cls(F.normalize(inter, dim=-1)) * 14.3 + 0.5 * verb @ self.verb2hoi
        obj = self.obj_cls(F.normalize(self.obj_ln(self.obj_fc(o)), dim=-1)) * 14.3
        return hoi, obj, self.hum_box(h).sigmoid(), self.obj_box(o).sigmoid()


def xyxy(b):
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def giou(a, b):
    a, b = xyxy(a), xyxy(b)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area(a) + area(b) - inter
    hull = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).prod(-1)
    iou = inter / union
    return iou - (hull - union) / hull


def criterion(outputs, targets):
    hoi, obj, sub, ob = outputs
    total = 0.0
    for layer in range(hoi.shape[0]):
        for b, t in enumerate(targets):
            with torch.no_grad():
                cost = (torch.cdist(sub[layer, b], t["sub"], p=1)
                        + torch.cdist(ob[layer, b], t["obj"], p=1)
                        - obj[layer, b].softmax(-1)[:, t["obj_labels"]]
                        - hoi[layer, b].sigmoid() @ t["hoi"].T / t["hoi"].sum(-1))
            rows, cols = scipy.optimize.linear_sum_assignment(cost.numpy())
            target = torch.zeros_like(hoi[layer, b])
            target[rows] = t["hoi"][cols]
            p = hoi[layer, b].sigmoid().clamp(1e-4, 1 - 1e-4)
            focal = -(target * (1 - p) ** 2 * p.log() + (1 - target) * p ** 2 * (1 - p).log())
            labels = torch.full((obj.shape[2],), obj.shape[-1] - 1, dtype=torch.long)
            labels[rows] = t["obj_labels"][cols]
            ce = F.cross_entropy(obj[layer, b], labels)
            l1 = (sub[layer, b, rows] - t["sub"][cols]).abs().sum() + \
                (ob[layer, b, rows] - t["obj"][cols]).abs().sum()
            g = (1 - giou(sub[layer, b, rows], t["sub"][cols])).sum() + \
                (1 - giou(ob[layer, b, rows], t["obj"][cols])).sum()
            total = total + 2 * focal.sum() / max(target.sum(), 1) + ce + 2.5 * l1 + g
    return total


def random_inputs(batch, size, generator):
    image = torch.randn(batch, 3, size, size, generator=generator)
    mask = torch.ones(batch, size, size, dtype=torch.bool)
    mask[1:2, :, size * 3 // 4:] = False
    clip_image = torch.randn(batch, 3, 224, 224, generator=generator)
    targets = []
    for _ in range(batch):
        box = lambda: torch.cat([torch.rand(3, 2, generator=generator) * 0.4 + 0.3,
                                 torch.rand(3, 2, generator=generator) * 0.4 + 0.1], -1)
        hoi = torch.zeros(3, 600)
        hoi[torch.arange(3), torch.randint(600, (3,), generator=generator)] = 1
        targets.append({"sub": box(), "obj": box(), "hoi": hoi,
                        "obj_labels": torch.randint(80, (3,), generator=generator)})
    return image, mask, clip_image, targets


def build(batch: int, size: int):
    """(train_step, inference, trainable params, all params): closures over one fixed batch."""
    torch.manual_seed(0)
    model = HoiProxy()
    model.freeze()
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone") and
                p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone") and
            p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": rest}, {"params": backbone, "lr": 1e-5}], lr=1e-4,
                                  weight_decay=1e-4)
    image, mask, clip_image, targets = random_inputs(batch, size, torch.Generator().manual_seed(0))

    def train_step():
        model.train()
        loss = criterion(model(image, mask, clip_image), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rest + backbone, 0.1)
        optimizer.step()

    def inference():
        model.eval()
        with torch.no_grad():
            model(image, mask, clip_image)

    count = lambda ps: sum(p.numel() for p in ps)
    return train_step, inference, count(rest + backbone), count(model.parameters())


def peak_rss_gib() -> float:
    """Peak RSS of this process: Linux's VmHWM (a subprocess's `ru_maxrss` would include its
    parent's peak from before the exec), else ru_maxrss. (benchmarks/train_step.py's
    `host_peak_rss_bytes` in GiB: this script runs in a torch venv without jax or this
    project, so it cannot import that one.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def serve(calls: dict) -> None:
    """`--serve`: runs one call per stdin line (a key of `calls`: 'train' or 'inference') and
    answers 'ms <milliseconds>'; 'quit' answers 'rss <peak GiB>' and ends. Used by
    benchmarks/side_by_side.py to interleave this model's steps with hoiclip-jax's."""
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            print(f"rss {peak_rss_gib():.3f}", flush=True)
            return
        start = time.perf_counter()
        calls[command]()
        print(f"ms {(time.perf_counter() - start) * 1e3:.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", default="",
                        help="comma-separated workloads (train, inference): after one warm-up "
                             "call of each, run the calls named on stdin")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_step, inference, trainable, total = build(args.batch, args.image_size)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.image_size}x{args.image_size}; params {trainable:,} trainable / {total:,}",
          flush=True)
    if args.serve:
        calls = {"train": train_step, "inference": inference}
        for workload in args.serve.split(","):
            calls[workload]()  # warm-up
        serve(calls)
        return

    def timed(fn):
        fn()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times

    train = timed(train_step)
    infer = timed(inference)
    print(f"train step median {statistics.median(train) * 1e3:,.0f} ms "
          f"({', '.join(f'{t * 1e3:.0f}' for t in train)})")
    print(f"inference median {statistics.median(infer) * 1e3:,.0f} ms "
          f"({', '.join(f'{t * 1e3:.0f}' for t in infer)})")
    print(f"peak RSS {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
