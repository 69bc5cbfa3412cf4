"""Sampling the synthetic scenes: people and things placed so that the rules of `scene.py`
derive exactly the intended interactions (`sample_scene`), at the class frequencies of
`intent_weights`."""
import numpy as np

from data_pipeline.synthetic.scene import (CLEAR_MARGIN, FAR_GAP, INTENTS, LOOK_PROB, LOOK_RANGE,
                                           Layout, MARGIN, MAX_TRIES, NUM_SHADES, OBJECTS, Person,
                                           Thing, _O, _V, box_gap, derive_interactions,
                                           faced_things, person_box, shift, skeleton, union)


def intent_weights(floor: float = 0.0) -> tuple[list, np.ndarray]:
    """(intents, probabilities); `floor` raises small weights (the test split uses it)."""
    intents = list(INTENTS)
    w = np.array([max(INTENTS[i], floor) for i in intents])
    return intents, w / w.sum()


def _thing_size(rng, kind: str) -> tuple[float, float]:
    u = rng.uniform
    if kind == "ball":
        d = u(16, 22)
        return d, d
    if kind == "box":
        s = u(18, 24)
        return s, s
    if kind == "board":
        return u(30, 38), u(13, 16)
    if kind == "umbrella":
        w = u(24, 30)
        return w, w * u(1.0, 1.15)
    if kind == "kite":
        w = u(16, 20)
        return w, w * 1.35
    return u(24, 28), u(28, 32)  # chair: wider than a seated person, so that it shows


def _box_at(w, h, x0=None, y0=None, cx=None, cy=None, x1=None, y1=None) -> tuple:
    """A w x h box fixed by one horizontal and one vertical anchor."""
    left = x0 if x0 is not None else (x1 - w if x1 is not None else cx - w / 2)
    up = y0 if y0 is not None else (y1 - h if y1 is not None else cy - h / 2)
    return (left, up, left + w, up + h)


def _group(rng, verb: str, kind: str):
    """(person, thing box, facing-look flag) of one intent, around x = 0, top = 0."""
    h, s = rng.uniform(34, 46), (1 if rng.random() < 0.5 else -1)
    w, th = _thing_size(rng, kind)
    pose = {"hold": "reach_high" if kind in ("umbrella", "kite") else "reach",
            "carry": "arms_up", "kick": "kick", "ride": "balance", "sit_on": "sit"}.get(verb,
                                                                                         "stand")
    facing = {"look_at": s}.get(verb, 0)
    if verb in ("hold", "kick") and rng.random() < LOOK_PROB:
        facing = s
    p = Person(0.0, 0.0, h, pose, s, facing, int(rng.integers(NUM_SHADES)))
    j, jit = skeleton(p), rng.uniform(-2, 2)
    if pose == "reach":
        hx, hy = j["hand"][s]
        near = hx - s * 1.0
        box = _box_at(w, th, x0=near if s > 0 else None, x1=near if s < 0 else None,
                      cy=hy + rng.uniform(-0.2, 0.2) * th)
    elif pose == "reach_high":
        box = _box_at(w, th, cx=j["hand"][s][0], y1=j["hand"][s][1] + 1)
    elif pose == "arms_up":
        box = _box_at(w, th, cx=jit, y1=j["hand"][1][1] + 1)
    elif pose == "kick":
        near = j["foot"][s][0] - s * 1.0
        box = _box_at(w, th, x0=near if s > 0 else None, x1=near if s < 0 else None,
                      y1=h + rng.uniform(0, 2))
    elif pose == "balance":
        box = _box_at(w, th, cx=jit, y0=h - 1)
    elif pose == "sit":
        seat = j["hip"][1] - 1
        box = _box_at(w, th, cx=jit, y0=seat - (0.45 * th if kind == "chair" else 0))
    elif verb == "look_at":
        pb = person_box(p)
        edge, gap = (pb[2] if s > 0 else pb[0]), rng.uniform(6, 20)
        box = _box_at(w, th, x0=edge + gap if s > 0 else None, x1=edge - gap if s < 0 else None,
                      cy=rng.uniform(0.25, 0.85) * h)
    else:  # no_interaction: the thing is placed later, far from the person
        box = _box_at(w, th, x0=0, y0=0)
    return p, Thing(_O[kind], box, int(rng.integers(2)))


def _place(rng, box: tuple, occupied: list, width: int, height: int):
    """(dx, dy) moving `box` inside the image, MARGIN away from every occupied box, or None."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    if bw > width - 2 or bh > height - 2:
        return None
    xs = rng.uniform(1, width - 1 - bw, size=25)
    ys = rng.uniform(1, height - 1 - bh, size=25)
    for x0, y0 in zip(xs.tolist(), ys.tolist()):
        cand = (x0, y0, x0 + bw, y0 + bh)
        if all(box_gap(cand, o) >= MARGIN for o in occupied):
            return x0 - box[0], y0 - box[1]
    return None


def _place_far(rng, thing: Thing, pbox: tuple, occupied: list, width: int, height: int):
    """Moves an idle person's thing to a box gap of FAR_GAP + 4..24 px from `pbox`, or None."""
    for _ in range(25):
        dx, dy = _place(rng, thing.box, occupied, width, height) or (None, None)
        if dx is None:
            return None
        moved = shift(thing, dx, dy)
        if FAR_GAP + 4 <= box_gap(moved.box, pbox) <= FAR_GAP + 24:
            return moved
    return None


def _try_layout(rng, width: int, height: int, intents: list, distractor: bool):
    persons, things, expected, occupied = [], [], set(), []
    for verb, kind in intents:
        p, t = _group(rng, verb, kind)
        idle = verb == "no_interaction"
        gbox = person_box(p) if idle else union(person_box(p), t.box)
        d = _place(rng, gbox, occupied, width, height)
        if d is None:
            return None
        p = shift(p, *d)
        occupied.append((gbox[0] + d[0], gbox[1] + d[1], gbox[2] + d[0], gbox[3] + d[1]))
        if idle:
            t = _place_far(rng, t, person_box(p), occupied, width, height)
            if t is None:
                return None
            occupied.append(t.box)
        else:
            t = shift(t, *d)
        i, k = len(persons), len(things)
        expected.add((i, k, _V[verb]))
        if verb != "look_at" and p.facing != 0:
            expected.add((i, k, _V["look_at"]))
        persons.append(p)
        things.append(t)
    if distractor:
        t = _random_thing(rng, occupied, width, height)
        if t is None:
            return None
        things.append(t)
    triplets = derive_interactions(persons, things)
    if set(triplets) != expected or not _unambiguous(persons, things):
        return None
    return Layout(width, height, tuple(persons), tuple(things), triplets)


def _unambiguous(persons, things) -> bool:
    """True when every 'nearest thing' rule is decided by a clear margin (CLEAR_MARGIN px)."""
    for p in persons:
        if p.facing:
            dist = [d for d, _ in faced_things(p, things)]
            if dist and abs(dist[0] - LOOK_RANGE) < CLEAR_MARGIN:
                return False
        elif p.pose == "stand":
            dist = sorted(box_gap(person_box(p), t.box) for t in things)
        else:
            continue
        if len(dist) > 1 and dist[1] - dist[0] < CLEAR_MARGIN:
            return False
    return True


def _random_thing(rng, occupied: list, width: int, height: int):
    kind = OBJECTS[int(rng.integers(1, len(OBJECTS)))]
    t = Thing(_O[kind], _box_at(*_thing_size(rng, kind), x0=0, y0=0), int(rng.integers(2)))
    d = _place(rng, t.box, occupied, width, height)
    return None if d is None else shift(t, *d)


def _no_interaction_scene(rng, width: int, height: int, people: bool) -> Layout:
    """1-3 things without people, or 1-3 idle people without things."""
    items, occupied = [], []
    for _ in range(int(rng.integers(1, 4))):
        if people:
            p = Person(0.0, 0.0, rng.uniform(34, 46), shade=int(rng.integers(NUM_SHADES)))
            d = _place(rng, person_box(p), occupied, width, height)
            item = None if d is None else shift(p, *d)
        else:
            item = _random_thing(rng, occupied, width, height)
        if item is not None:
            items.append(item)
            occupied.append(person_box(item) if people else item.box)
    return Layout(width, height, tuple(items) if people else (),
                  () if people else tuple(items), ())


def sample_scene(rng, weights: tuple[list, np.ndarray]) -> Layout:
    """A random scene whose derived interactions are the sampled intents."""
    width, height = (int(v) for v in rng.integers(96, 129, size=2))
    kind = rng.choice(3, p=[0.06, 0.04, 0.90])
    if kind < 2:
        return _no_interaction_scene(rng, width, height, people=kind == 1)
    intents_all, probs = weights
    n = int(rng.choice([1, 2, 3], p=[0.45, 0.38, 0.17]))
    intents = [intents_all[i] for i in rng.choice(len(intents_all), size=n, p=probs)]
    distractor = n < 3 and rng.random() < 0.15
    while intents:
        for _ in range(MAX_TRIES):
            layout = _try_layout(rng, width, height, intents, distractor)
            if layout is not None:
                return layout
        intents, distractor = intents[:-1], False  # too crowded: drop one person
    return _no_interaction_scene(rng, width, height, people=True)
