"""Scene images as training samples, with a sampler whose position is a function of the iteration (exact resume)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from training.datasets.records import SceneRecord


def load_rgb(path: str) -> np.ndarray:
    """Read an image file as RGB (H, W, 3) uint8."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy wants one


class SceneDataset(Dataset):
    """(index, hflip) -> (image (3, H, W) float in [0, 1], {"boxes": (K, 4) x1y1x2y2, "pids": (K,)}, name)."""

    def __init__(self, scenes: Sequence[SceneRecord]) -> None:
        self.scenes = [s for s in scenes if len(s.boxes)]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, item: tuple[int, bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
        index, flip = item
        scene = self.scenes[index]
        image = torch.from_numpy(load_rgb(str(scene.path))).permute(2, 0, 1).float().div_(255.0)
        boxes = torch.as_tensor(scene.boxes, dtype=torch.float32).reshape(-1, 4).clone()
        if flip:
            width = image.shape[-1]
            image = image.flip(-1)
            boxes[:, [0, 2]] = width - boxes[:, [2, 0]]
        return image, {"boxes": boxes, "pids": torch.as_tensor(scene.pids, dtype=torch.int64)}, scene.name


def scenes_covering_identities(scenes: Sequence[SceneRecord]) -> list[SceneRecord]:
    """The scenes, in order, that show a labeled identity no earlier chosen scene showed.

    Every labeled identity of ``scenes`` appears in the result at least once. On CUHK-SYSU-like data (several labeled
    people per image, each in 2-6 images) it is about a third of the images: what one look at every identity
    costs, e.g. to fill OIM's lookup table before a fine-tune.
    """
    seen: set[int] = set()
    chosen = []
    for scene in scenes:
        labeled = {int(p) for p in np.asarray(scene.pids).reshape(-1) if p >= 0}
        if labeled - seen:
            chosen.append(scene)
            seen |= labeled
    return chosen


def collate_scenes(batch: list) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[str]]:
    """Keep images as a list: they differ in size, and the model's transform batches them."""
    images, targets, names = zip(*batch)
    return list(images), list(targets), list(names)


class IterationSampler(Sampler[tuple[int, bool]]):
    """An endless stream of (index, hflip), shuffled per epoch from the seed, sharded over ranks.

    The stream is a pure function of (seed, rank, world size, start), so a run resumed at iteration i with
    ``start = i * images_per_batch`` sees exactly the samples the uninterrupted run would have seen.
    """

    def __init__(self, size: int, seed: int, hflip: bool, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if size == 0:
            raise ValueError("the training set has no image with a person box")
        self.size, self.seed, self.hflip = size, seed, hflip
        self.rank, self.world_size, self.start = rank, world_size, start

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size)
        flips = rng.random(self.size) < 0.5 if self.hflip else np.zeros(self.size, dtype=bool)
        return order, flips

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        # Global position g = local position * world_size + rank, walking through consecutive epochs.
        local = self.start
        epoch, cached = -1, (np.empty(0, dtype=np.int64), np.empty(0, dtype=bool))
        while True:
            g = local * self.world_size + self.rank
            e, i = divmod(g, self.size)
            if e != epoch:
                epoch, cached = e, self._epoch(e)
            yield int(cached[0][i]), bool(cached[1][i])
            local += 1

    def __len__(self) -> int:  # endless; the trainer stops it
        return 2**62
