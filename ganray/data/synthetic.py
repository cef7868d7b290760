"""The built-in procedural face dataset: stylised, labeled faces drawn with PIL, no download.

Face `i` of dataset seed `s` is a pure function of (s, i, resolution): every random choice comes
from `numpy.random.default_rng([s, i])`, drawn in a fixed order, so any worker can render any face
and gets the same bytes. Faces are laid out on a unit square, drawn at MIN_DRAW_SIZE px or more
(at least MIN_SUPERSAMPLE x the resolution) and shrunk with an antialiased resize, so they look the
same (only sharper) at any resolution.
"""
from __future__ import annotations

import numpy as np
import ray
from PIL import Image, ImageDraw

# Bump when the drawing changes: it is part of the synthetic dataset's identity (manifest hash).
RENDERER_VERSION = 1

# Ordered: label column j of the training schema is ATTRIBUTES' j-th name.
ATTRIBUTES: dict[str, list[str]] = {
    "skin_tone": ["very_light", "light", "medium", "tan", "dark"],
    "hair_color": ["black", "brown", "blonde", "red", "grey"],
    "hair_length": ["short", "long"],
    "age_group": ["child", "adult", "senior"],
    "smile": ["no", "yes"],
    "glasses": ["no", "yes"],
}

SKIN_RGB = [(250, 222, 200), (235, 190, 150), (198, 142, 100), (150, 98, 62), (96, 60, 40)]
HAIR_RGB = [(28, 24, 24), (98, 62, 34), (222, 190, 112), (172, 72, 34), (168, 168, 170)]
EYE_RGB = [(92, 56, 30), (60, 110, 170), (70, 120, 70), (110, 90, 60)]

# Faces are drawn at least this many pixels wide before the antialiased downsample.
MIN_DRAW_SIZE = 256
MIN_SUPERSAMPLE = 2


def _jitter_rgb(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, ...]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def sample_labels(index: int, seed: int = 0) -> tuple[dict[str, int], np.random.Generator]:
    """Face `index`'s attributes (uniform, so the set is balanced) and the rng for its details."""
    rng = np.random.default_rng([seed, index])
    labels = {name: int(rng.integers(len(values))) for name, values in ATTRIBUTES.items()}
    return labels, rng


def render_face(index: int, resolution: int, seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """Draw face `index` of dataset `seed`: (H, W, 3) uint8 image and {attribute: value index}."""
    labels, rng = sample_labels(index, seed)
    child = labels["age_group"] == 0
    senior = labels["age_group"] == 2

    # Every random draw below happens in the same order whatever the attributes, so a face's
    # jitter never depends on which branches ran (and the stream stays easy to reason about).
    j = rng.uniform(-1.0, 1.0, size=14)  # geometry jitter, one per use below
    background = tuple(int(c) for c in rng.integers(90, 230, size=3))
    shirt = tuple(int(c) for c in rng.integers(30, 220, size=3))
    skin = _jitter_rgb(SKIN_RGB[labels["skin_tone"]], rng, 8)
    hair = _jitter_rgb(HAIR_RGB[labels["hair_color"]], rng, 10)
    eye_color = EYE_RGB[int(rng.integers(len(EYE_RGB)))]
    grey_mix = float(rng.uniform(0.25, 0.55))
    frame = tuple(int(c) for c in rng.integers(10, 120, size=3))
    if senior:  # seniors go grey: blend the hair toward silver, keeping its hue recognisable
        hair = _mix(hair, (200, 200, 204), grey_mix)

    size = max(MIN_DRAW_SIZE, MIN_SUPERSAMPLE * resolution)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)

    def px(v: float) -> int:
        return int(round(v * size))

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        return px(x0), px(y0), px(x1), px(y1)

    def width(v: float) -> int:
        return max(1, px(v))

    # Head geometry in unit-square coordinates: centre (cx, cy), half-width a, half-height b.
    cx = 0.5 + 0.025 * j[0]
    cy = 0.50 + 0.025 * j[1]
    a = (0.25 if not child else 0.27) * (1 + 0.05 * j[2])
    b = (0.31 if not child else 0.28) * (1 + 0.05 * j[3])
    shade = _mix(skin, (0, 0, 0), 0.25)
    line = _mix(skin, (40, 20, 10), 0.55)

    # Shoulders and neck, behind everything else.
    draw.ellipse(box(cx - 0.42, cy + b * 1.05, cx + 0.42, cy + b * 2.3), fill=shirt)
    draw.rectangle(box(cx - a * 0.38, cy + b * 0.6, cx + a * 0.38, cy + b * 1.2), fill=shade)

    long_hair = labels["hair_length"] == 1
    if long_hair:  # hair falling down both sides, behind the head, to the shoulders
        drop = 1.25 + 0.1 * j[4]
        draw.rounded_rectangle(
            box(cx - a * 1.22, cy - b * 1.08, cx + a * 1.22, cy + b * drop), radius=px(a * 0.6), fill=hair
        )

    # Ears, then the head over them.
    ear_y = cy - 0.02
    for side in (-1, 1):
        ex = cx + side * a * 0.98
        draw.ellipse(box(ex - a * 0.13, ear_y - b * 0.15, ex + a * 0.13, ear_y + b * 0.15), fill=skin)
    draw.ellipse(box(cx - a, cy - b, cx + a, cy + b), fill=skin)

    # Hair cap: the upper half of an ellipse a bit larger than the head, flat edge at the hairline.
    hairline = cy - b * (0.42 + 0.06 * j[5])
    cap_top = cy - b * (1.1 if not long_hair else 1.12)
    draw.chord(
        box(cx - a * 1.06, cap_top, cx + a * 1.06, hairline + (hairline - cap_top)), 180, 360, fill=hair
    )
    if long_hair:  # a side parting so long hair also frames the forehead
        draw.pieslice(box(cx - a * 1.06, cap_top, cx + a * 0.4, hairline + b * 0.5), 180, 270, fill=hair)

    # Eyes: whites, iris, pupil and a highlight. Children's eyes are bigger.
    eye_y = cy - b * (0.06 + 0.03 * j[6])
    eye_dx = a * (0.40 + 0.03 * j[7])
    erx = a * (0.19 if child else 0.15)
    ery = b * (0.10 if child else 0.075)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse(box(ex - erx, eye_y - ery, ex + erx, eye_y + ery), fill=(250, 250, 250))
        ir = ery * 0.95
        draw.ellipse(box(ex - ir, eye_y - ir, ex + ir, eye_y + ir), fill=eye_color)
        pr = ir * 0.5
        draw.ellipse(box(ex - pr, eye_y - pr, ex + pr, eye_y + pr), fill=(10, 10, 10))
        hr = pr * 0.45
        draw.ellipse(box(ex + pr * 0.2, eye_y - pr * 0.9, ex + pr * 0.2 + 2 * hr, eye_y - pr * 0.9 + 2 * hr),
                     fill=(255, 255, 255))
        # Eyebrow: a slightly tilted bar in a darker shade of the hair.
        by = eye_y - ery - b * (0.08 + 0.015 * j[8])
        tilt = b * 0.03 * j[9] * side
        draw.line([(px(ex - erx * 1.1), px(by + tilt)), (px(ex + erx * 1.1), px(by - tilt))],
                  fill=_mix(hair, (0, 0, 0), 0.35), width=width(b * 0.045))

    # Nose: a short line down and a little foot, in a darker skin shade.
    nose_len = b * (0.22 if child else 0.30) * (1 + 0.1 * j[10])
    nose_top = eye_y + ery
    nose_x = cx + a * 0.04 * j[11]
    draw.line([(px(nose_x), px(nose_top)), (px(nose_x + a * 0.06), px(nose_top + nose_len)),
               (px(nose_x - a * 0.08), px(nose_top + nose_len + b * 0.02))],
              fill=line, width=width(b * 0.025), joint="curve")

    # Mouth: a smiling arc or a straight, slightly pursed line.
    mouth_y = cy + b * (0.50 + 0.04 * j[12])
    mouth_w = a * (0.40 + 0.05 * j[13])
    lips = _mix(skin, (150, 30, 40), 0.6)
    if labels["smile"]:
        depth = b * 0.16
        draw.arc(box(cx - mouth_w, mouth_y - depth * 1.2, cx + mouth_w, mouth_y + depth * 0.8),
                 15, 165, fill=lips, width=width(b * 0.06))
    else:
        draw.line([(px(cx - mouth_w * 0.8), px(mouth_y)), (px(cx + mouth_w * 0.8), px(mouth_y))],
                  fill=lips, width=width(b * 0.05))

    if senior:  # wrinkles: forehead lines, crow's feet, and lines from nose to mouth corners
        wl = _mix(skin, (60, 30, 20), 0.35)
        ww = width(b * 0.014)
        for k in range(2):
            fy = hairline + b * (0.10 + 0.07 * k)
            draw.arc(box(cx - a * 0.45, fy, cx + a * 0.45, fy + b * 0.12), 200, 340, fill=wl, width=ww)
        for side in (-1, 1):
            fx = cx + side * (eye_dx + erx * 1.25)
            for k in (-1, 0, 1):
                draw.line([(px(fx), px(eye_y + k * ery * 0.5)),
                           (px(fx + side * a * 0.10), px(eye_y + k * ery * 1.0))], fill=wl, width=ww)
            nx = cx + side * a * 0.22
            draw.line([(px(nx), px(nose_top + nose_len * 0.8)),
                       (px(cx + side * mouth_w * 1.1), px(mouth_y + b * 0.05))], fill=wl, width=ww)

    if labels["glasses"]:  # two rims, a bridge, and the arms toward the ears
        gw = width(b * 0.045)
        grx, gry = erx * 1.55, ery * 2.0
        for side in (-1, 1):
            ex = cx + side * eye_dx
            draw.ellipse(box(ex - grx, eye_y - gry, ex + grx, eye_y + gry), outline=frame, width=gw)
            draw.line([(px(ex + side * grx), px(eye_y)), (px(cx + side * a * 0.97), px(eye_y - b * 0.03))],
                      fill=frame, width=gw)
        draw.line([(px(cx - eye_dx + grx), px(eye_y)), (px(cx + eye_dx - grx), px(eye_y))], fill=frame, width=gw)

    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8), labels


def render_batch(ids: np.ndarray, resolution: int, seed: int) -> dict[str, np.ndarray]:
    """Faces `ids` in the training schema: `image` (B, H, W, 3) uint8 plus one int64 column per attribute."""
    images = np.empty((len(ids), resolution, resolution, 3), dtype=np.uint8)
    labels = {name: np.empty(len(ids), dtype=np.int64) for name in ATTRIBUTES}
    for row, index in enumerate(ids):
        images[row], face_labels = render_face(int(index), resolution, seed)
        for name, value in face_labels.items():
            labels[name][row] = value
    return {"image": images, **labels}


def synthetic_dataset(count: int, resolution: int, seed: int = 0, *,
                      parallelism: int | None = None) -> ray.data.Dataset:
    """A Ray Dataset of faces 0..count-1 of dataset `seed`, in the training schema, rendered lazily."""
    return ray.data.range(count, override_num_blocks=parallelism).map_batches(
        lambda batch: render_batch(batch["id"], resolution, seed), batch_format="numpy"
    )
