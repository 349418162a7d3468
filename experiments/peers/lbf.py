"""``"lbf"``: OpenCV's Facemark LBF, trained on our faces and boxes, out of process.

``cv::face::FacemarkLBF``; Ren et al., "Face alignment at 3000 fps via regressing
local binary features", CVPR 2014, trained on our training split and our boxes.
Optional: it runs in a child process, the C++ program ``tools/lbf_tool.cpp`` built
against a system OpenCV with the contrib modules and named by
``$FACE_ALIGN_LBF_TOOL`` (README, "Optional peers").
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from common import atomic
from common.schemes import LandmarkScheme
from experiments.peers.base import Peer, check_boxes, face_arrays, rgb_image, round_half_up
from experiments.peers.registry import register_peer

LBF_TOOL_ENV = "FACE_ALIGN_LBF_TOOL"
"""Environment variable naming the ``lbf_tool`` program (``tools/lbf_tool.cpp``)."""

LBF_DEFAULT_OPTIONS: dict[str, Any] = {
    "initShape_n": 10,
    "stages_n": 5,
    "tree_n": 6,
    "tree_depth": 5,
    "bagging_overlap": 0.4,
    "seed": 0,
    "feats_m": [500, 500, 500, 300, 300, 300, 200, 200, 200, 100],
    "radius_m": [0.3, 0.2, 0.15, 0.12, 0.10, 0.10, 0.08, 0.06, 0.06, 0.05],
}
"""``cv::face::FacemarkLBF::Params()`` of OpenCV 4.x (``facemarkLBF.cpp``).

LBF is Ren et al., "Face alignment at 3000 fps via regressing local binary features",
CVPR 2014: ``stages_n`` cascade stages; per stage and landmark a random forest of
``tree_n`` trees (``tree_depth = 5``: 4 pixel-difference tests, 16 leaves) learnt on
``feats_m[stage]`` candidate pixel pairs within ``radius_m[stage]`` (in half box
sides) of the landmark, each tree on a bag of the samples (``bagging_overlap``);
then one global linear regression from all leaves to the shape update (liblinear's
dual coordinate descent for the L2-loss SVR with epsilon 0, i.e. ridge regression,
C = 1 / samples). Every training face is used twice (OpenCV adds its mirror image) with
``initShape_n`` initial shapes each, taken from other faces. ``seed`` only seeds that
choice: OpenCV seeds the trees' feature sampling with the clock, so training is not
repeatable.
"""

LBF_QUICK_OPTIONS: dict[str, Any] = {"initShape_n": 1}
"""Overrides of ``LBF_DEFAULT_OPTIONS`` that ``experiments.compare_real`` uses by
default: one initial shape per face (and per mirror image) instead of 10.

Training time is about proportional to ``initShape_n`` (samples per tree) and to
``feats_m`` (candidate tests per node); with one initial shape OpenCV trained on the
2,661 ytf68 training faces (68 points) in about 7 minutes of CPU (one thread; 44
minutes of wall time on two cores shared with a dozen other processes). OpenCV's
defaults (``lbf_options={}``) would take about ten times longer."""

LBF_FLIP_PAIRS = {
    68: [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
    + [(36 + i, 45 - i) for i in range(4)] + [(41, 46), (40, 47), (31, 35), (32, 34)]
    + [(48 + i, 54 - i) for i in range(3)] + [(59, 55), (58, 56), (60, 64), (61, 63),
                                              (67, 65)],
    29: [(0, 1), (2, 3), (4, 6), (5, 7), (12, 14), (8, 9), (10, 11), (16, 17), (13, 15),
         (18, 19), (22, 23)],
}
"""The landmark pairs FacemarkLBF swaps in the mirrored copy of each training face
(``data_augmentation`` in OpenCV's ``facemarkLBF.cpp``, 0-based here); it has tables
for 68 and 29 points only, and mirrors the points of any other count unswapped."""


class LBFUnavailable(RuntimeError):
    """No working ``lbf_tool`` (not configured, not found or not runnable)."""


def lbf_tool_path(tool: str | None = None) -> str | None:
    """The ``lbf_tool`` to use: ``tool``, else ``$FACE_ALIGN_LBF_TOOL``, else None."""
    path = tool or os.environ.get(LBF_TOOL_ENV) or None
    return os.path.expanduser(path) if path else None


def check_lbf_tool(tool: str | None = None) -> dict[str, Any]:
    """Runs ``lbf_tool version``.

    Args:
        tool: path of the program; default ``lbf_tool_path()``.

    Returns:
        ``{"tool": path, "opencv": version, "protocol": 1}``.

    Raises:
        LBFUnavailable: not configured, missing, or it fails (e.g. a missing OpenCV
            library); the message says which and points to the README.
    """
    import json
    import subprocess

    path = lbf_tool_path(tool)
    hint = ("build tools/lbf_tool.cpp against OpenCV with the contrib modules and set "
            f"{LBF_TOOL_ENV} (see README, 'Optional peers')")
    if path is None:
        raise LBFUnavailable(f"no OpenCV LBF tool configured: {hint}")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise LBFUnavailable(f"{path!r} is not an executable file: {hint}")
    try:
        done = subprocess.run([path, "version"], check=False, capture_output=True, text=True,
                              timeout=60)
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        raise LBFUnavailable(f"{path} version failed ({e}): {hint}") from e
    if done.returncode != 0 or "opencv" not in info:
        raise LBFUnavailable(f"{path} version failed (exit {done.returncode}: "
                             f"{done.stderr.strip()[-300:]}): {hint}")
    return {"tool": path, **info}


def lbf_options(options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``LBF_DEFAULT_OPTIONS`` with ``options`` applied, checked.

    Raises:
        ValueError: an unknown name, or fewer ``feats_m`` / ``radius_m`` than stages.
    """
    resolved = {key: (list(value) if isinstance(value, list) else value)
                for key, value in LBF_DEFAULT_OPTIONS.items()}
    for key, value in (options or {}).items():
        if key not in LBF_DEFAULT_OPTIONS:
            raise ValueError(f"unknown FacemarkLBF option {key!r}; known: "
                             f"{', '.join(sorted(LBF_DEFAULT_OPTIONS))}")
        resolved[key] = list(value) if isinstance(value, (list, tuple)) else value
    for key in ("feats_m", "radius_m"):
        if len(resolved[key]) < int(resolved["stages_n"]):
            raise ValueError(f"{key} needs a value per stage ({resolved['stages_n']} "
                             f"stages), got {resolved[key]}")
    return resolved


@dataclasses.dataclass(frozen=True)
class LBFLayout:
    """How a landmark scheme maps onto the points of a FacemarkLBF model.

    FacemarkLBF mirrors every training face and swaps left/right points with its
    tables for 68 and 29 points (``LBF_FLIP_PAIRS``). A scheme whose flip matches the
    68-point table (iBUG 68) is used as is. Any other scheme (CUHK 5) is embedded in
    the 29-point table: each swapped pair of slots holds a left/right pair of the
    scheme, each unswapped slot a point the flip keeps (the nose), cycling through
    them, so that OpenCV's mirrored copies are labelled correctly. The duplicated
    points are trained like any other; predictions are read from each point's first
    slot (``primary``).

    Attributes:
        num_points: the scheme's point count L.
        slots: ``[S]`` the scheme point held by each model point.
        primary: ``[L]`` the model point read for each scheme point.
        pupils: (left, right) model points of the scheme's pupils (OpenCV's training
            log reports its error relative to them).
    """

    num_points: int
    slots: tuple[int, ...]
    primary: tuple[int, ...]
    pupils: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    @classmethod
    def for_scheme(cls, scheme: LandmarkScheme) -> LBFLayout:
        """The layout of ``scheme``.

        Raises:
            ValueError: a scheme that fits neither table.
        """
        flip = list(scheme.flip_permutation)
        n = len(flip)
        if n in LBF_FLIP_PAIRS and flip == _pairs_to_permutation(LBF_FLIP_PAIRS[n], n):
            slots = list(range(n))
        else:
            pairs = [(i, j) for i, j in enumerate(flip) if i < j]
            fixed = [i for i, j in enumerate(flip) if i == j]
            table = LBF_FLIP_PAIRS[29]
            swapped = {k for pair in table for k in pair}
            free = [k for k in range(29) if k not in swapped]
            if (not pairs and table) or (not fixed and free) or len(pairs) > len(table) \
                    or len(fixed) > len(free):
                raise ValueError(f"scheme {scheme.name} ({n} points) fits neither of "
                                 "FacemarkLBF's flip tables (68 and 29 points)")
            slots = [0] * 29
            for k, (a, b) in enumerate(table):
                slots[a], slots[b] = pairs[k % len(pairs)]
            for k, slot in enumerate(free):
                slots[slot] = fixed[k % len(fixed)]
        primary = tuple(slots.index(i) for i in range(n))
        pupils = (tuple(primary[i] for i in scheme.left_pupil),
                  tuple(primary[i] for i in scheme.right_pupil))
        return cls(num_points=n, slots=tuple(slots), primary=primary, pupils=pupils)


def _pairs_to_permutation(pairs: Sequence[tuple[int, int]], n: int) -> list[int]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def lbf_rect(box: np.ndarray) -> tuple[int, int, int, int]:
    """The ``cv::Rect`` (x, y, width, height) given to FacemarkLBF for a float box.

    Edges rounded to whole pixels (halves up), at least one pixel wide and high.
    FacemarkLBF treats the rectangle as the continuous box ``[x, x + w] x [y, y + h]``
    in the landmarks' coordinates, identically in training and fitting.
    """
    left, top, right, bottom = (round_half_up(v) for v in
                                np.asarray(box, np.float64).reshape(4))
    return left, top, max(1, right - left), max(1, bottom - top)


def _write_lbf_faces(folder: str, images: Sequence[np.ndarray], boxes: np.ndarray,
                     slots: Sequence[int], landmarks: np.ndarray | None = None) -> None:
    """Writes ``faces.txt`` and ``pixels.bin`` of the ``lbf_tool`` protocol."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    offset = 0
    lines = [f"{len(images)} {len(slots)}"]
    with open(os.path.join(folder, "pixels.bin"), "wb") as pixels:
        for index, (image, box) in enumerate(zip(images, boxes)):
            # FacemarkLBF converts colour images with BGR2GRAY; the same weights on
            # our RGB channels give the same grey image.
            grey = np.ascontiguousarray(cv2.cvtColor(rgb_image(image), cv2.COLOR_RGB2GRAY))
            pixels.write(grey.tobytes())
            fields = [offset, grey.shape[1], grey.shape[0], *lbf_rect(box)]
            line = " ".join(str(v) for v in fields)
            if landmarks is not None:
                points = np.asarray(landmarks[index], np.float64)[list(slots)]
                line += " " + " ".join(f"{v:.6f}" for v in points.reshape(-1))
            lines.append(line)
            offset += grey.size
    with open(os.path.join(folder, "faces.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _run_lbf_tool(args: Sequence[str], what: str) -> str:
    import subprocess

    done = subprocess.run(list(args), check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"lbf_tool {what} failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout


@register_peer("lbf")
class LBFPeer(Peer):
    """OpenCV's Facemark LBF (``cv::face::FacemarkLBF``, Ren et al., CVPR 2014).

    Trained and run by ``lbf_tool`` (``tools/lbf_tool.cpp``), a small C++ program
    built against a system OpenCV with the contrib modules, in a child process: the
    Python bindings of opencv-contrib wrap LBF's ``fit`` and ``loadModel`` but not its
    trainer, and the opencv-contrib wheel cannot share an environment with the
    package's ``opencv-python-headless``. Faces go to the tool as grey images with
    integer boxes (``lbf_rect``) in files. Training adds each face with our box as
    the face detector's answer (OpenCV drops a face whose landmarks do not fit the
    box, its ``getBBox`` rule: ``train_info["accepted"]`` counts those kept); fitting
    gives FacemarkLBF our box. Landmark schemes map onto OpenCV's point tables with
    ``LBFLayout`` (5 points ride in a 29-point model).

    ``predict_batch`` / ``predict_batch_timed`` run all faces in one child process;
    ``predict`` starts one per face (and loads the model each time).

    Args:
        model_path: a trained model (``train``, ``save``, ``load``).
        options: overrides of ``LBF_DEFAULT_OPTIONS`` for ``fit``.
        tool: the ``lbf_tool`` program (default ``$FACE_ALIGN_LBF_TOOL``).
        layout: the ``LBFLayout`` of ``model_path``.

    Raises:
        LBFUnavailable: no working ``lbf_tool``.
    """

    name = "lbf"
    trainable = True
    model_suffix = ".yml"

    def __init__(self, model_path: str | None = None, options: Mapping[str, Any] | None = None,
                 tool: str | None = None, layout: LBFLayout | None = None):
        self.tool_info = check_lbf_tool(tool)
        self.tool = self.tool_info["tool"]
        self.options = lbf_options(options)
        self.model_path = model_path
        self.layout = layout
        self.train_seconds: float | None = None
        self.train_info: dict[str, Any] | None = None
        self.last_times: np.ndarray | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None

    @classmethod
    def train(cls, faces: Iterable[Any], options: Mapping[str, Any] | None = None,
              tool: str | None = None, scheme: LandmarkScheme | None = None) -> LBFPeer:
        """Trains a FacemarkLBF model on ``faces`` with their boxes.

        Args:
            faces: ``Face`` objects or ``(image, landmarks, box, ...)`` tuples.
            options: overrides of ``LBF_DEFAULT_OPTIONS``.
            tool: the ``lbf_tool`` program.
            scheme: landmark scheme (default ``scheme_for(L)``).

        Returns:
            The trained peer (its model in a temporary folder until ``save``);
            ``train_seconds`` is OpenCV's training time, ``train_info`` the tool's
            record (OpenCV version, faces given and accepted, resolved parameters).
        """
        import json

        from common.schemes import scheme_for

        peer = cls(options=options, tool=tool)
        images, landmarks, boxes = face_arrays(faces)
        check_boxes(boxes)
        layout = LBFLayout.for_scheme(scheme or scheme_for(landmarks.shape[1]))
        peer._workdir = tempfile.TemporaryDirectory(prefix="lbf-")
        folder = os.path.join(peer._workdir.name, "train")
        _write_lbf_faces(folder, images, boxes, layout.slots, landmarks)
        del images
        model_path = os.path.join(peer._workdir.name, "lbf.yml")
        args = [peer.tool, "train", folder, model_path]
        for key, value in peer.options.items():
            value = ",".join(str(v) for v in value) if isinstance(value, list) else value
            args.append(f"{key}={value}")
        args += [f"pupils_left={','.join(map(str, layout.pupils[0]))}",
                 f"pupils_right={','.join(map(str, layout.pupils[1]))}"]
        output = _run_lbf_tool(args, "train")
        shutil.rmtree(folder, ignore_errors=True)
        peer.train_info = json.loads(output.strip().splitlines()[-1])
        peer.train_seconds = float(peer.train_info["train_seconds"])
        peer.model_path, peer.layout = model_path, layout
        return peer

    def fit(self, train_faces: Iterable[Any]) -> LBFPeer:
        """Trains in place with this peer's ``options``."""
        trained = self.train(train_faces, self.options, self.tool)
        for key in ("model_path", "layout", "train_seconds", "train_info", "_workdir"):
            setattr(self, key, getattr(trained, key))
        return self

    def _require(self) -> str:
        if self.model_path is None or self.layout is None:
            raise RuntimeError("LBFPeer has no model: call train/fit or load first")
        return self.model_path

    def predict_batch_timed(self, images: Sequence[np.ndarray],
                            boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of ``images[i]`` in ``boxes[i]``, in one run of the tool.

        Returns:
            ``(landmarks float32 [N, L, 2] pixels (NaN where OpenCV's fit failed),
            seconds float64 [N])``: the time of each ``FacemarkLBF::fit`` call inside
            the tool (model loading and file transfer excluded; grey conversion done
            before).
        """
        model_path = self._require()
        boxes = check_boxes(boxes)
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        with tempfile.TemporaryDirectory(prefix="lbf-fit-") as folder:
            _write_lbf_faces(folder, images, boxes, self.layout.slots)
            out = os.path.join(folder, "predictions.txt")
            _run_lbf_tool([self.tool, "fit", folder, model_path, out], "fit")
            table = np.loadtxt(out, dtype=np.float64, ndmin=2)
        if table.shape != (len(images), 1 + 2 * self.layout.num_slots):
            raise RuntimeError(f"lbf_tool fit wrote a {table.shape} table for "
                               f"{len(images)} faces of {self.layout.num_slots} points")
        points = table[:, 1:].reshape(len(images), -1, 2)[:, list(self.layout.primary)]
        self.last_times = table[:, 0]
        return points.astype(np.float32), table[:, 0]

    def predict_batch(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        """Landmarks ``[N, L, 2]`` (see ``predict_batch_timed``)."""
        return self.predict_batch_timed(images, boxes)[0]

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Landmarks ``[L, 2]`` of one face (one child process; prefer the batch)."""
        return self.predict_batch([image], np.asarray(box, np.float32).reshape(1, 4))[0]

    def save(self, path: str) -> None:
        """Copies the model (OpenCV's FileStorage YAML) to ``path`` and its layout to
        ``path + ".layout.json"``, atomically."""
        import json

        model_path = self._require()
        layout = dataclasses.asdict(self.layout)
        atomic.write_atomically(path + ".layout.json",
                      lambda tmp: _write_text(tmp, json.dumps(layout) + "\n"))
        atomic.write_atomically(path, lambda tmp: shutil.copyfile(model_path, tmp))

    @classmethod
    def load(cls, path: str, tool: str | None = None) -> LBFPeer:
        """Reads a model written by ``save``."""
        import json

        if not (os.path.isfile(path) and os.path.isfile(path + ".layout.json")):
            raise FileNotFoundError(f"no LBF model (and .layout.json) at {path!r}")
        with open(path + ".layout.json") as f:
            layout = json.load(f)
        layout = LBFLayout(num_points=int(layout["num_points"]),
                           slots=tuple(layout["slots"]), primary=tuple(layout["primary"]),
                           pupils=tuple(tuple(p) for p in layout["pupils"]))
        return cls(model_path=path, tool=tool, layout=layout)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
