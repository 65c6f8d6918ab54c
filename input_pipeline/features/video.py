"""Classic face descriptor per utterance video clip (OpenCV only, no pretrained CNN).

Why: no model hub is reachable, and a Haar face detector + HOG/LBP texture +
motion energy is the well-understood pre-deep-learning baseline for facial
affect; it runs in tens of milliseconds per clip on one core.

Per clip: N frames sampled uniformly (sequential grab/retrieve: for short clips
it is faster than seeking and always frame-exact), each paired with the next
frame for motion.  The largest Haar face is kept and missing detections are
filled from the nearest frame that had one; with no face at all the clip falls
back to a centre crop, which is NOT an error: `face_found_frac` (first vector
entry) is 0 and the pipeline counts it.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from input_pipeline.features.registry import Extractor, MediaError, register

_CROP = 64  # face crop side (pixels); HOG and regions below assume it
_EYES = (slice(14, 34), slice(6, 58))   # rows, cols of the eye band in the crop
_MOUTH = (slice(42, 62), slice(14, 50))
_GEOM = ("face_found_frac", "face_w_mean", "face_w_std", "face_cx_mean", "face_cx_std",
         "face_cy_mean", "face_cy_std", "n_frames_used")
_MOTION = ("motion_face_mean", "motion_face_max", "motion_eyes_mean", "motion_mouth_mean",
           "motion_mouth_max", "motion_frame_mean", "motion_frame_max")


def _lbp_lut() -> np.ndarray:
    """8-neighbour LBP code -> rotation-invariant uniform label (0..8 ones, 9 = non-uniform)."""
    lut = np.empty(256, np.int64)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        lut[code] = sum(bits) if transitions <= 2 else 9
    return lut


_LUT = _lbp_lut()
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def lbp_histogram(gray: np.ndarray) -> np.ndarray:
    """Normalised 10-bin uniform LBP histogram of a 2-D uint8/float image."""
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    code = np.zeros(c.shape, np.int64)
    h, w = g.shape
    for bit, (dy, dx) in enumerate(_OFFSETS):
        code |= (g[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] >= c).astype(np.int64) << bit
    hist = np.bincount(_LUT[code].ravel(), minlength=10).astype(np.float32)
    return hist / max(hist.sum(), 1.0)


class FaceDescriptorExtractor(Extractor):
    """Haar face + HOG/LBP/intensity-grid/colour/motion statistics -> float32 vector."""

    modality = "video"

    def __init__(self, num_frames: int = 8, detect_stride: int = 2, det_max_side: int = 240,
                 scale_factor: float = 1.1, min_neighbors: int = 5, min_face_frac: float = 0.15,
                 smooth: bool = True, centre_crop_frac: float = 0.6,
                 cascade: str = "haarcascade_frontalface_alt2.xml"):
        # alt2 at 240 px / min face 15% of the short side: on the astronaut photo the
        # 'default' cascade also fires on the flag patch, and this is ~4x faster.
        self.num_frames = num_frames
        self.detect_stride = max(1, detect_stride)  # detect on every k-th sampled frame
        self.det_max_side = det_max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_frac = min_face_frac
        self.smooth = smooth
        self.centre_crop_frac = centre_crop_frac
        self.cascade = cascade
        self._detector = None
        self._hog = None

    def _init_cv(self):
        import cv2
        if self._detector is None:
            path = os.path.join(cv2.data.haarcascades, self.cascade)
            det = cv2.CascadeClassifier(path)
            if det.empty():
                raise RuntimeError(f"cannot load Haar cascade {path} (OpenCV >= 5 ships none; "
                                   "install opencv-python-headless < 5)")
            self._detector = det
            self._hog = cv2.HOGDescriptor((_CROP, _CROP), (32, 32), (16, 16), (16, 16), 9)

    # -- spec ---------------------------------------------------------------
    @property
    def frame_dim(self) -> int:
        return 324 + 30 + 16 + 4 + 6  # HOG, 3 LBP hists, 4x4 grid, eye/mouth mean+std, BGR mean+std

    def feature_names(self) -> list[str]:
        per = ([f"hog{i}" for i in range(324)]
               + [f"lbp_{r}{i}" for r in ("face", "eyes", "mouth") for i in range(10)]
               + [f"grid{i}" for i in range(16)]
               + ["eyes_mean", "eyes_std", "mouth_mean", "mouth_std"]
               + [f"{c}_{s}" for s in ("mean", "std") for c in "bgr"])
        return (list(_GEOM) + list(_MOTION) + [f"{n}_mean" for n in per]
                + [f"{n}_std" for n in per])

    def output_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"vector": ((len(_GEOM) + len(_MOTION) + 2 * self.frame_dim,), "float32")}

    def settings(self) -> dict[str, Any]:
        keys = ("num_frames", "detect_stride", "det_max_side", "scale_factor", "min_neighbors", "min_face_frac",
                "smooth", "centre_crop_frac", "cascade")
        return {k: getattr(self, k) for k in keys}

    # -- decoding -----------------------------------------------------------
    def read_frame_pairs(self, path: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(frame t, frame t+1) BGR pairs at `num_frames` uniform positions."""
        import cv2
        if not os.path.exists(path):
            raise MediaError(path, "missing file")
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                raise MediaError(path, "unreadable video (cannot open)")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if count <= 0:  # unknown length: decode all (short clips), then subsample
                frames = []
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    frames.append(frame)
                return self._pairs_from_list(frames, path)
            starts = np.unique(np.linspace(0, max(count - 2, 0), self.num_frames).round().astype(int))
            wanted = set(starts.tolist()) | set((starts + 1).tolist())
            got: dict[int, np.ndarray] = {}
            last = max(wanted)
            for idx in range(last + 1):
                if not cap.grab():
                    break
                if idx in wanted:
                    ok, frame = cap.retrieve()
                    if ok and frame is not None:
                        got[idx] = frame
        finally:
            cap.release()
        pairs = [(got[s], got.get(s + 1, got[s])) for s in starts if s in got]
        if not pairs:
            raise MediaError(path, "zero frames decoded")
        return pairs

    def _pairs_from_list(self, frames: list[np.ndarray], path: str):
        if not frames:
            raise MediaError(path, "zero frames decoded")
        n = len(frames)
        starts = np.unique(np.linspace(0, max(n - 2, 0), self.num_frames).round().astype(int))
        return [(frames[s], frames[min(s + 1, n - 1)]) for s in starts]

    # -- face ---------------------------------------------------------------
    def detect_largest_face(self, gray: np.ndarray) -> tuple[int, int, int, int] | None:
        """Largest Haar face (x, y, w, h) in full-resolution coordinates, or None."""
        import cv2
        self._init_cv()
        h, w = gray.shape
        scale = min(1.0, self.det_max_side / max(h, w))
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1.0 else gray
        small = cv2.equalizeHist(small)
        min_side = max(12, int(self.min_face_frac * min(small.shape)))
        faces = self._detector.detectMultiScale(small, scaleFactor=self.scale_factor,
                                                minNeighbors=self.min_neighbors,
                                                minSize=(min_side, min_side))
        if len(faces) == 0:
            return None
        x, y, fw, fh = max(faces, key=lambda f: int(f[2]) * int(f[3]))
        return (int(x / scale), int(y / scale), int(fw / scale), int(fh / scale))

    def _boxes(self, grays: list[np.ndarray]) -> tuple[np.ndarray, float]:
        """One box per frame, (found fraction over the frames searched); gaps filled from the
        nearest frame with a face, then optionally median-smoothed over 3 frames."""
        tried = list(range(0, len(grays), self.detect_stride))
        found = {i: self.detect_largest_face(grays[i]) for i in tried}
        hits = [i for i in tried if found[i] is not None]
        h, w = grays[0].shape
        if not hits:
            side = int(self.centre_crop_frac * min(h, w))
            box = ((w - side) // 2, (h - side) // 2, side, side)
            return np.array([box] * len(grays), np.float64), 0.0
        boxes = np.array([found[min(hits, key=lambda j: abs(j - i))] for i in range(len(grays))],
                         np.float64)
        if self.smooth and len(boxes) >= 3:
            padded = np.concatenate([boxes[:1], boxes, boxes[-1:]], 0)
            boxes = np.median(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
        return boxes, len(hits) / len(tried)

    # -- extraction ---------------------------------------------------------
    def extract(self, item: Any) -> dict[str, np.ndarray]:
        import cv2
        path = str(item)
        self._init_cv()
        pairs = self.read_frame_pairs(path)
        grays = [cv2.cvtColor(a, cv2.COLOR_BGR2GRAY) for a, _ in pairs]
        nexts = [cv2.cvtColor(b, cv2.COLOR_BGR2GRAY) for _, b in pairs]
        boxes, found_frac = self._boxes(grays)
        h, w = grays[0].shape
        per_frame, motion = [], []
        for (bgr, _), g0, g1, box in zip(pairs, grays, nexts, boxes, strict=True):
            x, y, bw, bh = (int(round(v)) for v in box)
            x, y = max(0, x), max(0, y)
            bw, bh = max(1, min(bw, w - x)), max(1, min(bh, h - y))
            crop = cv2.resize(g0[y:y + bh, x:x + bw], (_CROP, _CROP), interpolation=cv2.INTER_AREA)
            crop1 = cv2.resize(g1[y:y + bh, x:x + bw], (_CROP, _CROP), interpolation=cv2.INTER_AREA)
            colour = bgr[y:y + bh, x:x + bw].reshape(-1, 3).astype(np.float32) / 255.0
            f = crop.astype(np.float32) / 255.0
            grid = f.reshape(4, 16, 4, 16).mean(axis=(1, 3)).ravel()
            eyes, mouth = f[_EYES], f[_MOUTH]
            per_frame.append(np.concatenate([
                self._hog.compute(crop).ravel(),
                lbp_histogram(crop), lbp_histogram(crop[_EYES]), lbp_histogram(crop[_MOUTH]),
                grid, [eyes.mean(), eyes.std(), mouth.mean(), mouth.std()],
                colour.mean(0), colour.std(0)]).astype(np.float32))
            d = np.abs(crop1.astype(np.float32) - crop.astype(np.float32)) / 255.0
            small0 = cv2.resize(g0, (_CROP, _CROP), interpolation=cv2.INTER_AREA).astype(np.float32)
            small1 = cv2.resize(g1, (_CROP, _CROP), interpolation=cv2.INTER_AREA).astype(np.float32)
            motion.append((d.mean(), d[_EYES].mean(), d[_MOUTH].mean(),
                           np.abs(small1 - small0).mean() / 255.0))
        feats = np.stack(per_frame)
        mot = np.asarray(motion, np.float32)
        geom = [found_frac, boxes[:, 2].mean() / w, boxes[:, 2].std() / w,
                (boxes[:, 0] + boxes[:, 2] / 2).mean() / w, (boxes[:, 0] + boxes[:, 2] / 2).std() / w,
                (boxes[:, 1] + boxes[:, 3] / 2).mean() / h, (boxes[:, 1] + boxes[:, 3] / 2).std() / h,
                float(len(pairs))]
        motion_stats = [mot[:, 0].mean(), mot[:, 0].max(), mot[:, 1].mean(), mot[:, 2].mean(),
                        mot[:, 2].max(), mot[:, 3].mean(), mot[:, 3].max()]
        vector = np.concatenate([np.asarray(geom, np.float32), np.asarray(motion_stats, np.float32),
                                 feats.mean(0), feats.std(0)]).astype(np.float32)
        return {"vector": vector}


@register("opencv_face")
def _make_face(**kwargs) -> FaceDescriptorExtractor:
    return FaceDescriptorExtractor(**kwargs)
