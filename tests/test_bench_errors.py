"""bench/bench_errors.py: the error breakdown reads world.json right (checked on embeddings built from the truth)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from training.datasets.cuhk_sysu import CUHKSYSU
from training.evaluation import save_results
from training.synth.world import load_world_truth

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from bench_errors import analyse, pair_rows


def test_look_alikes_placed_above_the_true_match_explain_every_lost_query(tiny_world: Path, tmp_path: Path) -> None:
    """Each identity gets a direction; its look-alikes sit exactly on it, its own boxes slightly off it.

    So every look-alike of a query outranks the query's matches, removing them gives perfect retrieval, and the
    breakdown by attribute counts every one of them.
    """
    rng = np.random.default_rng(0)
    dim = 64
    truth = load_world_truth(tiny_world)
    direction: dict[str, np.ndarray] = {}

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    def of(name: str) -> np.ndarray:
        if name not in direction:
            direction[name] = unit(rng.normal(size=dim))
        return direction[name]

    def embed(t) -> np.ndarray:  # type: ignore[no-untyped-def]
        if t.identity is not None:
            return unit(of(t.identity) + 0.1 * unit(rng.normal(size=dim)))
        if t.lookalike_of is not None:
            return of(t.lookalike_of)
        return unit(rng.normal(size=dim))

    ds = CUHKSYSU(tiny_world)
    scenes = ds.test_scenes()
    queries = ds.queries(50)
    names = [s.name for s in scenes]
    embs = [np.stack([embed(t) for t in truth[s.name]]) for s in scenes]
    q = np.stack([of(x.idname) for x in queries])
    npz = save_results(
        tmp_path / "r.npz", names, [s.boxes for s in scenes], [np.ones(len(s.boxes)) for s in scenes], embs, q
    )
    r = analyse(tiny_world, npz, 50)

    look_q = sum(n for _, n in r["by_attr"].values())
    assert look_q > 0, "the tiny world's galleries hold look-alikes of their queries"
    assert sum(k for k, _ in r["by_attr"].values()) == look_q
    assert r["mAP"]["no query look-alikes"] == 1.0 and r["mAP"]["no look-alikes"] == 1.0
    assert r["mAP"]["full"] < 1.0
    assert abs(r["cos"]["look-alike of the query"] - 1) < 1e-5
    assert r["cos"]["match"] > 0.9 and abs(r["cos"]["stranger"]) < 0.5
    rows = dict(pair_rows(r["pairs"]))
    assert rows["all"].sum() == len(r["pairs"]) == sum(sum(g.box is not None for g in x.gallery) for x in queries)
