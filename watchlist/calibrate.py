"""Calibrate the watchlist's default threshold for a model on a labelled person-search set.

Every query box of the ``TestG<N>`` protocol and every ground-truth box of the same identity in its gallery is
embedded the way the watchlist embeds a photo (the query graph on the given box). Pairs of boxes of one identity
in different images are *genuine*, pairs of different identities *impostors*. For each threshold we measure the
genuine accept rate (a frame of the person votes for them) and the false match rate (a frame of someone else does);
the recommended threshold is the lowest one whose false match rate is at most ``target_fmr``. The matcher's
consensus (several frames of one tracklet) makes a false *alert* much rarer than a false frame match.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from detector.engine import Engine

logger = logging.getLogger(__name__)


@dataclass
class Calibration:
    threshold: float  # recommended default threshold
    target_fmr: float
    fmr: float  # false match rate at the threshold
    gar: float  # genuine accept rate at the threshold
    genuine_pairs: int
    impostor_pairs: int
    identities: int
    boxes: int
    curve: list[tuple[float, float, float]]  # (threshold, gar, fmr)

    def table(self) -> str:
        rows = [f"{'threshold':>9}  {'genuine accept':>14}  {'false match':>11}"]
        for t, g, f in self.curve:
            if abs(round(t * 20) - t * 20) < 1e-6:  # every 0.05
                mark = "  <- recommended" if abs(t - self.threshold) < 1e-6 else ""
                rows.append(f"{t:>9.2f}  {g:>14.3f}  {f:>11.4f}{mark}")
        if not any("recommended" in r for r in rows):
            rows.append(f"{self.threshold:>9.3f}  {self.gar:>14.3f}  {self.fmr:>11.4f}  <- recommended")
        return "\n".join(rows)


def embed_identities(
    engine: Engine, root: Path, gallery_size: int = 100, max_queries: int | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D) embeddings, (N,) identity index and (N,) image index of the query and gallery ground-truth boxes."""
    from training.datasets.cuhk_sysu import CUHKSYSU

    ds = CUHKSYSU(root)
    queries = ds.queries(gallery_size)[:max_queries]
    wanted: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)  # image -> [(identity, box)]
    seen: set[tuple[str, str]] = set()
    for q in queries:
        for name, box in [(q.name, q.box)] + [(g.name, g.box) for g in q.gallery if g.box is not None]:
            if (q.idname, name) not in seen:
                seen.add((q.idname, name))
                wanted[name].append((q.idname, np.asarray(box, np.float32)))
    ids = {idname: i for i, idname in enumerate(sorted({i for i, _ in seen}))}
    embs, labels, images = [], [], []
    for k, (name, items) in enumerate(tqdm(sorted(wanted.items()), desc="embed", disable=not progress)):
        image = np.asarray(Image.open(ds.image_path(name)).convert("RGB"))
        e = engine.embed(image, np.stack([b for _, b in items]))
        embs.append(e)
        labels += [ids[i] for i, _ in items]
        images += [k] * len(items)
    return np.concatenate(embs).astype(np.float32), np.asarray(labels), np.asarray(images)


def calibrate(embeddings: np.ndarray, labels: np.ndarray, images: np.ndarray, target_fmr: float = 0.01) -> Calibration:
    """The lowest threshold with a false match rate <= ``target_fmr`` over all pairs of boxes in different images."""
    sims = embeddings @ embeddings.T
    iu = np.triu_indices(len(labels), k=1)
    s = sims[iu]
    different_image = images[iu[0]] != images[iu[1]]
    same = labels[iu[0]] == labels[iu[1]]
    genuine = np.sort(s[same & different_image])
    impostor = np.sort(s[~same & different_image])
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("calibration needs identities seen in at least two images and at least two identities")
    curve = []
    for t in np.round(np.arange(-0.2, 1.0001, 0.01), 2):
        gar = 1.0 - np.searchsorted(genuine, t, side="left") / len(genuine)
        fmr = 1.0 - np.searchsorted(impostor, t, side="left") / len(impostor)
        curve.append((float(t), float(gar), float(fmr)))
    # The smallest threshold that keeps the false match rate within the target (exact, from the sorted impostors).
    k = int(np.floor(target_fmr * len(impostor)))
    threshold = float(impostor[-k - 1]) + 1e-4 if k < len(impostor) else float(impostor[0])
    threshold = float(np.ceil(threshold * 100) / 100)
    gar = 1.0 - np.searchsorted(genuine, threshold, side="left") / len(genuine)
    fmr = 1.0 - np.searchsorted(impostor, threshold, side="left") / len(impostor)
    return Calibration(
        threshold=threshold, target_fmr=target_fmr, fmr=float(fmr), gar=float(gar), genuine_pairs=len(genuine),
        impostor_pairs=len(impostor), identities=int(labels.max()) + 1, boxes=len(labels), curve=curve,
    )  # fmt: skip


def plot(cal: Calibration, path: Path, title: str = "") -> Path:
    """Genuine accept and false match rates against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    t, g, f = (np.array(v) for v in zip(*cal.curve))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(t, g, label="genuine accept rate")
    ax.plot(t, f, label="false match rate")
    ax.axvline(cal.threshold, color="k", ls="--", lw=1, label=f"recommended {cal.threshold:.2f}")
    ax.set_xlabel("cosine threshold")
    ax.set_ylim(0, 1)
    ax.set_title(title or "watchlist threshold calibration")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(
    engine: Engine, root: Path, gallery_size: int, target_fmr: float, json_path: Path | None, plot_path: Path | None
) -> Calibration:
    emb, labels, images = embed_identities(engine, root, gallery_size)
    cal = calibrate(emb, labels, images, target_fmr)
    out: dict[str, Any] = {"model": engine.model_name, "data": str(root), "gallery_size": gallery_size, **asdict(cal)}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(out, indent=2))
    if plot_path is not None:
        plot(cal, plot_path, f"{engine.model_name} on {root.name}")
    return cal


__all__ = ["Calibration", "calibrate", "embed_identities", "plot", "run"]
