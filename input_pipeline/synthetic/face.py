"""Renders a talking avatar face and writes it as mp4.

A drawn cartoon face is not reliably found by OpenCV's Haar frontal-face
cascade (which the feature extractor uses to crop faces), so the face is built
on a real photograph: the luminance of the face in `skimage.data.astronaut()`,
re-coloured with the avatar's skin tone, with her mouth and brows (and, for the
eyeless base, her eyes) removed by inpainting.  On that base we draw the
avatar's hair, clothes and background, and per frame the expression: brows,
eye openness (her own eyes, scaled), a drawn mouth, nose wrinkle, flush and
head tremble (a `styles.FaceStyle`).  The mouth opens with the speech loudness
envelope, so mouth motion is in sync with the wav.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from input_pipeline.synthetic.styles import Avatar, FaceStyle

FPS = 10
SIZE = 128
_AA = cv2.LINE_AA
# Landmarks of the face in skimage.data.astronaut() (512x512), measured once by hand.
_CENTER = (225.0, 125.0)
_HALF = (43.0, 55.0)  # face half-width / half-height
_EYES = ((204.0, 100.0), (246.0, 102.0))
_EYE_HALF = (12.0, 7.0)
_BROWS = (((214.0, 90.0), (192.0, 94.0)), ((236.0, 91.0), (258.0, 96.0)))  # (inner, outer)
_MOUTH = (225.0, 146.0)
_MOUTH_HALF = 20.0
_CHEEKS = ((205, 122), (245, 122))
# Expression gains in source pixels; larger values read more clearly but Haar misses more faces.
BROW_RAISE_PX, BROW_TILT_PX, BROW_WIDTH_PX, EYE_WIDE_GAIN = 6.0, 4.5, 4.5, 1.0
GAMMA = 1.0  # >1 deepens the photo's shading


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _shade(color, k: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * k, 0, 255)) for c in color)


def _bezier(p0, p1, p2, n: int = 12) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - s) ** 2 * np.asarray(p0, float) + 2 * (1 - s) * s * np.asarray(p1, float) + s ** 2 * np.asarray(p2, float)


@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, np.ndarray]:
    """Face luminance relative to the cheeks: (with eyes, without eyes); mouth and brows inpainted in both."""
    from skimage import data

    gray = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)
    mask = np.zeros_like(gray)
    cv2.ellipse(mask, _pt(*_MOUTH), (27, 14), 0, 0, 360, 255, -1)
    for (inner, outer) in _BROWS:
        mid = ((inner[0] + outer[0]) / 2, (inner[1] + outer[1]) / 2)
        cv2.ellipse(mask, _pt(*mid), (15, 6), 0, 0, 360, 255, -1)
    plain = cv2.inpaint(gray, mask, 6, cv2.INPAINT_TELEA)
    eye_mask = np.zeros_like(gray)
    for e in _EYES:
        cv2.ellipse(eye_mask, _pt(*e), _pt(*_EYE_HALF), 0, 0, 360, 255, -1)
    eyeless = cv2.inpaint(plain, eye_mask, 6, cv2.INPAINT_TELEA)
    ref = float(np.median(np.concatenate([plain[y - 6:y + 6, x - 6:x + 6].ravel() for x, y in _CHEEKS])))
    blur = lambda im: cv2.GaussianBlur(im.astype(np.float32) / ref, (0, 0), 0.8)
    return blur(plain), blur(eyeless)


class FaceRenderer:
    """Draws frames of one avatar with one expression; the static head is composed once per clip."""

    def __init__(self, avatar: Avatar, style: FaceStyle, size: int = SIZE):
        self.avatar, self.style, self.size = avatar, style, size
        self.s = 37.0 * avatar.face_scale * size / 128.0 / _HALF[0]  # source px -> output px
        self.cx, self.cy = size / 2.0, size / 2.0 + 2.0 * size / 128.0
        skin = np.asarray(avatar.skin, float)
        self.skin = skin * (1 - 0.35 * style.flush) + np.array([70.0, 70.0, 230.0]) * 0.35 * style.flush
        self.eye_scale = 1.12 if avatar.age == "child" else 1.0
        self.base, self.with_eyes = self._compose()

    def _p(self, x: float, y: float) -> tuple[float, float]:
        """Source (photo) coordinates -> output pixel coordinates."""
        return self.cx + self.s * (x - _CENTER[0]), self.cy + self.s * (y - _CENTER[1])

    def _compose(self) -> tuple[np.ndarray, np.ndarray]:
        n, av, s, p = self.size, self.avatar, self.s, self._p
        ramp = np.linspace(1.08, 0.88, n)[:, None, None]
        img = np.clip(np.asarray(av.background, float)[None, None, :] * ramp, 0, 255).astype(np.uint8)
        img = np.ascontiguousarray(np.broadcast_to(img, (n, n, 3)))
        hair, skin = av.hair, tuple(float(c) for c in self.skin)
        if av.gender == "female":  # long hair behind the head
            cv2.ellipse(img, _pt(*p(225, 120)), _pt(62 * s, 70 * s), 0, 180, 360, hair, -1, _AA)
            cv2.rectangle(img, _pt(*p(163, 118)), _pt(*p(287, 200)), hair, -1)
        cv2.ellipse(img, _pt(*p(225, 232)), _pt(95 * s, 50 * s), 0, 180, 360, av.shirt, -1, _AA)
        cv2.rectangle(img, _pt(*p(207, 160)), _pt(*p(243, 190)), _shade(skin, 0.75), -1)
        for sx in (-1, 1):  # ears
            cv2.ellipse(img, _pt(*p(225 + sx * 43, 118)), _pt(7 * s, 12 * s), 0, 0, 360, _shade(skin, 0.8), -1, _AA)
        m = np.array([[s, 0, self.cx - s * _CENTER[0]], [0, s, self.cy - s * _CENTER[1]]])
        alpha = np.zeros((n, n), np.float32)
        cv2.ellipse(alpha, _pt(*p(225, 124)), _pt(_HALF[0] * s, _HALF[1] * s), 0, 0, 360, 1.0, -1, _AA)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 1.2)[..., None]
        out = []
        for tex in _textures()[::-1]:  # eyeless first
            lum = cv2.warpAffine(tex, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            face = np.asarray(skin, np.float32)[None, None, :] * np.power(lum, GAMMA)[..., None]
            comp = np.clip(img * (1 - alpha) + face * alpha, 0, 255).astype(np.uint8)
            self._hair_cap(comp)
            out.append(comp)
        return out[0], out[1]

    def _hair_cap(self, img: np.ndarray) -> None:
        av, s, p = self.avatar, self.s, self._p
        if av.age == "elderly":  # receding hairline and forehead lines
            cv2.ellipse(img, _pt(*p(225, 76)), _pt(47 * s, 30 * s), 0, 180, 360, av.hair, -1, _AA)
            for k in range(2):
                y = 80 + 5 * k
                cv2.line(img, _pt(*p(207, y)), _pt(*p(243, y)), _shade(self.skin, 0.72), 1, _AA)
        else:
            cv2.ellipse(img, _pt(*p(225, 84)), _pt(48 * s, 42 * s), 0, 180, 360, av.hair, -1, _AA)
            if av.age == "child":  # fringe
                cv2.ellipse(img, _pt(*p(225, 82)), _pt(34 * s, 7 * s), 0, 0, 180, av.hair, -1, _AA)

    def frame(self, talk: float, blink: bool, offset: tuple[float, float], tilt_deg: float) -> np.ndarray:
        """One frame; talk in [0, 1] is the speech loudness at this instant."""
        st, s, p = self.style, self.s, self._p
        img = self.base.copy()
        opening = st.eye_open if st.eye_open <= 1 else 1 + EYE_WIDE_GAIN * (st.eye_open - 1)
        opening *= 0.1 if blink else 1.0
        for e in _EYES:
            self._paste_eye(img, p(*e), opening)
        brow_col = _shade(self.avatar.hair, 0.5) if self.avatar.age != "elderly" else (70, 70, 75)
        for inner, outer in _BROWS:
            dy = -st.brow_raise * BROW_RAISE_PX
            a = p(inner[0], inner[1] + dy - st.brow_tilt * BROW_TILT_PX)
            b = p(outer[0], outer[1] + dy + st.brow_tilt * BROW_TILT_PX / 3)
            mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 - 2.5 * s)
            cv2.polylines(img, [_bezier(a, mid, b).astype(np.int32)], False, brow_col, max(2, int(round(BROW_WIDTH_PX * s))), _AA)
        if st.wrinkle > 0:
            for k in range(3):
                y = 108 + 4 * k
                cv2.line(img, _pt(*p(219, y)), _pt(*p(231, y - 1)), _shade(self.skin, 0.6), 1, _AA)
        self._mouth(img, talk)
        m = cv2.getRotationMatrix2D((self.cx, self.cy), tilt_deg, 1.0)
        m[:, 2] += offset
        return cv2.warpAffine(img, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def _paste_eye(self, img: np.ndarray, centre: tuple[float, float], opening: float) -> None:
        """Her eye, scaled vertically by `opening` over the eyeless base (squint .. wide open)."""
        hw, hh = _EYE_HALF[0] * self.s * 1.15, _EYE_HALF[1] * self.s * 1.15
        x0, x1 = int(np.floor(centre[0] - hw)), int(np.ceil(centre[0] + hw))
        y0, y1 = int(np.floor(centre[1] - hh)), int(np.ceil(centre[1] + hh))
        if opening < 0.2:
            cv2.line(img, _pt(x0 + 1, centre[1]), _pt(x1 - 1, centre[1]), _shade(self.skin, 0.45), 1, _AA)
            return
        patch = self.with_eyes[y0:y1, x0:x1].astype(np.float32)
        w = x1 - x0
        h = max(2, int(round((y1 - y0) * opening * self.eye_scale)))
        w2 = max(2, int(round(w * self.eye_scale)))
        patch = cv2.resize(patch, (w2, h), interpolation=cv2.INTER_LINEAR)
        alpha = np.zeros((h, w2), np.float32)
        cv2.ellipse(alpha, _pt((w2 - 1) / 2, (h - 1) / 2), _pt(w2 / 2 - 0.5, h / 2 - 0.5), 0, 0, 360, 1.0, -1, _AA)
        top, left = int(round(centre[1] - h / 2)), int(round(centre[0] - w2 / 2))
        region = img[top:top + h, left:left + w2].astype(np.float32)
        a = alpha[: region.shape[0], : region.shape[1], None]
        img[top:top + h, left:left + w2] = (region * (1 - a) + patch[: region.shape[0], : region.shape[1]] * a).astype(np.uint8)

    def _mouth(self, img: np.ndarray, talk: float) -> None:
        st, s = self.style, self.s
        cx, my = self._p(*_MOUTH)
        b = _HALF[1] * s
        my -= st.wrinkle * 0.05 * b
        mw = _MOUTH_HALF * s * st.mouth_width
        corner_y = my - st.mouth_curve * 0.12 * b
        left = (cx - mw, corner_y - st.asym * 0.14 * b)
        right = (cx + mw, corner_y + st.asym * 0.02 * b)
        gap = float(np.clip(st.mouth_open + 0.4 * talk, 0.0, 1.3)) * 0.18 * b
        upper_mid = (cx, my - gap / 2 - 0.02 * b - st.wrinkle * 0.03 * b)
        lower_mid = (cx, my + gap / 2 + max(st.mouth_curve, 0.0) * 0.06 * b + 0.02 * b)
        upper = _bezier(left, (upper_mid[0], 2 * upper_mid[1] - (left[1] + right[1]) / 2), right)
        lower = _bezier(right, (lower_mid[0], 2 * lower_mid[1] - (left[1] + right[1]) / 2), left)
        sk = self.skin
        lip = _shade((0.5 * sk[0] + 40, 0.5 * sk[1] + 35, 0.6 * sk[2] + 80), 0.85)
        poly = np.concatenate([upper, lower]).astype(np.int32)
        if gap > 1.5:
            cv2.fillPoly(img, [poly], (35, 25, 70), _AA)
            if st.teeth > 0.2:
                teeth = np.concatenate([upper, upper[::-1] + np.array([0.0, gap * 0.45])]).astype(np.int32)
                cv2.fillPoly(img, [teeth], (225, 230, 235), _AA)
        cv2.polylines(img, [poly], True, lip, 2, _AA)


def render_clip(avatar: Avatar, style: FaceStyle, envelope: np.ndarray, env_rate: int, duration: float,
                rng: np.random.Generator, noise: bool = False, fps: int = FPS, size: int = SIZE) -> list[np.ndarray]:
    """BGR frames covering `duration` seconds; `noise` hides the face under noise (conflict clips)."""
    renderer = FaceRenderer(avatar, style, size)
    n = max(1, int(round(duration * fps)))
    phase = rng.uniform(0, 2 * np.pi, 2)
    blink_at = set(rng.choice(n, size=max(1, n // 25), replace=False).tolist()) if n > 5 else set()
    tilt = 4.0 * style.asym
    frames = []
    for i in range(n):
        t0, t1 = int(i / fps * env_rate), int((i + 1) / fps * env_rate)
        talk = float(envelope[t0:max(t1, t0 + 1)].mean()) if t0 < len(envelope) else 0.0
        jitter = rng.normal(0.0, style.tremble, 2) if style.tremble > 0 else np.zeros(2)
        off = (1.5 * np.sin(2 * np.pi * 0.4 * i / fps + phase[0]) + jitter[0],
               1.0 * np.sin(2 * np.pi * 0.3 * i / fps + phase[1]) + jitter[1])
        img = renderer.frame(talk, i in blink_at, off, tilt)
        if noise:
            img = (0.2 * img + 0.8 * rng.integers(0, 256, img.shape)).astype(np.uint8)
        frames.append(img)
    return frames


def write_mp4(path: str, frames: list[np.ndarray], fps: int = FPS) -> None:
    """MPEG-4 part 2 ('mp4v') through OpenCV: deterministic output for the same frames."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter could not open {path}")
    try:
        for f in frames:
            writer.write(f)
    finally:
        writer.release()
