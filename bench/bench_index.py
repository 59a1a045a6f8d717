"""Tracklet index: search latency (batch of 1), recall@10 against exact search, upsert rate, save and load time.

Run: python bench/bench_index.py [--vectors 1000000] [--queries 200] [--nlist N] [--nprobe P ...] [--threads T]
                                 [--no-record]

Everything goes through ``TrackletIndex``, once per index kind, so latencies include its metadata filters. The data
are synthetic re-ID embeddings: N/250 identities, each a Gaussian cloud around a random unit centre whose spread is
drawn per identity (some people look alike across sightings, some do not), every tracklet on one of 16 cameras at a
random time in 30 days. Queries are new sightings of the same identities; the exact top 10 (numpy, over the filtered
tracklets) is the reference for recall.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, record

from index.store import IvfOptions, TrackletIndex, TrackletRecord

CAMERAS = 16
DAYS = 30
T0 = 1.7e9
PER_IDENTITY = 250
SPREAD = (0.05, 0.12)  # per-dimension noise; centre-to-sighting cosine 1/sqrt(1 + 256 s^2): 0.62 .. 0.38
K = 10


@dataclass(frozen=True)
class Filter:
    """A search filter of the benchmark, as passed to ``TrackletIndex.search``."""

    name: str
    cameras: tuple[str, ...] | None = None
    since: float | None = None
    until: float | None = None

    def mask(self, camera: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """(N,) bool: the tracklets this filter keeps."""
        keep = np.ones(len(camera), bool)
        if self.cameras is not None:
            keep &= np.isin(camera, [int(c[3:]) for c in self.cameras])
        if self.since is not None:
            keep &= end >= self.since
        if self.until is not None:
            keep &= start <= self.until
        return keep


FILTERS = [
    Filter("none"),
    Filter("4 cameras of 16", cameras=("cam00", "cam01", "cam02", "cam03")),
    Filter("1 camera of 16", cameras=("cam03",)),
    Filter("1 camera, 1 day of 30", cameras=("cam03",), since=T0 + 10 * 86400, until=T0 + 11 * 86400),
]


def embeddings(n: int, centres: np.ndarray, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """(n, D) float32 unit vectors, each a noisy sighting of a random identity in ``centres`` (C, D)."""
    spread = rng.uniform(*SPREAD, len(centres)).astype(np.float32)
    out = np.empty((n, centres.shape[1]), np.float32)
    for s in range(0, n, chunk):
        who = rng.integers(0, len(centres), min(chunk, n - s))
        x = centres[who] + spread[who, None] * rng.standard_normal((len(who), centres.shape[1]), dtype=np.float32)
        out[s : s + len(who)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def exact_top_k(queries: np.ndarray, data: np.ndarray, masks: list[np.ndarray], k: int) -> list[np.ndarray]:
    """Per mask, (Q, <=k) indices (in no order) of each query's best data rows among the rows the mask keeps."""
    best = [np.empty((len(queries), 0), np.int64) for _ in masks]
    best_scores = [np.empty((len(queries), 0), np.float32) for _ in masks]
    chunk = 65536
    for s in tqdm(range(0, len(data), chunk), desc="exact top-10", unit="chunk", leave=False):
        scores = queries @ data[s : s + chunk].T
        for m, mask in enumerate(masks):
            cols = np.flatnonzero(mask[s : s + chunk])
            cand = np.concatenate([best_scores[m], scores[:, cols]], axis=1)
            ids = np.concatenate([best[m], np.broadcast_to(cols + s, (len(queries), len(cols)))], axis=1)
            if cand.shape[1] > k:  # keep the k best so far (unordered: recall compares sets)
                top = np.argpartition(-cand, k - 1, axis=1)[:, :k]
                ids, cand = np.take_along_axis(ids, top, 1), np.take_along_axis(cand, top, 1)
            best[m], best_scores[m] = ids, cand
    return best


def build(
    directory: Path, kind: str, data: np.ndarray, meta: dict[str, np.ndarray], ivf: IvfOptions, device: str
) -> tuple[TrackletIndex, float]:
    """A TrackletIndex of ``data`` filled one upsert at a time, as the live pipeline does; and upserts per second."""
    index = TrackletIndex(directory, dim=data.shape[1], model="bench", kind=kind, device=device, ivf=ivf)
    started = time.perf_counter()
    for i in tqdm(range(len(data)), desc=f"upsert {kind}", unit="vec", unit_scale=True, leave=False):
        rec = TrackletRecord(
            tracklet_id=f"t{i}",
            camera=f"cam{meta['camera'][i]:02d}",
            start_ts=float(meta["start"][i]),
            end_ts=float(meta["end"][i]),
            frames=25,
            best_box=(100.0, 80.0, 160.0, 260.0),
            best_score=0.9,
            best_seq=i,
        )
        index.upsert(rec, data[i])
    return index, len(data) / (time.perf_counter() - started)


def measure(index: TrackletIndex, queries: np.ndarray, flt: Filter, truth: np.ndarray) -> tuple[float, float, float]:
    """p50 and p95 latency (ms) of one-query searches and mean recall@10 against ``truth`` (Q, <=10)."""
    index.search(queries[0], K, cameras=flt.cameras, since=flt.since, until=flt.until)  # warm-up
    latencies, recalls = [], []
    for q, expected in zip(tqdm(queries, desc=f"search {flt.name}", unit="query", leave=False), truth):
        started = time.perf_counter()
        hits = index.search(q, K, cameras=flt.cameras, since=flt.since, until=flt.until)
        latencies.append(time.perf_counter() - started)
        found = {int(h.record.tracklet_id[1:]) for h in hits}
        recalls.append(len(found & set(expected.tolist())) / max(1, len(expected)))
    p50, p95 = np.percentile(np.array(latencies) * 1e3, [50, 95])
    return float(p50), float(p95), float(np.mean(recalls))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=1_000_000, help="tracklets in the index")
    p.add_argument("--queries", type=int, default=200, help="timed queries per index kind and filter")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf"], choices=["flat", "ivf"])
    p.add_argument("--nlist", type=int, help="IVF lists (default: IvfOptions', fewer if N is too small to train them)")
    p.add_argument(
        "--nprobe", type=int, nargs="+", default=[IvfOptions().nprobe],
        help="IVF lists probed per query; several values sweep recall against latency on one built index",
    )  # fmt: skip
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (default: faiss's, one per core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-record", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    nlist = args.nlist or IvfOptions().nlist
    while args.nlist is None and 64 * nlist > args.vectors // 2 and nlist > 16:
        nlist //= 2  # train on at most half the tracklets, so the benchmark measures a trained IVF
    probes = sorted({min(n, nlist) for n in args.nprobe})
    ivf = IvfOptions(nlist=nlist, nprobe=probes[0], train_size=64 * nlist)

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(1, args.vectors // PER_IDENTITY), args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = embeddings(args.vectors, centres, rng)
    queries = embeddings(args.queries, centres, rng)
    start = T0 + rng.uniform(0, DAYS * 86400, args.vectors)
    meta = {
        "camera": rng.integers(0, CAMERAS, args.vectors),
        "start": start,
        "end": start + rng.uniform(2, 60, len(start)),
    }
    masks = [f.mask(meta["camera"], meta["start"], meta["end"]) for f in FILTERS]
    truth = exact_top_k(queries, data, masks, K)

    build_rows: list[list[Any]] = []
    search_rows: list[list[Any]] = []
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as tmp:
            index, rate = build(Path(tmp), kind, data, meta, ivf, args.device)
            started = time.perf_counter()
            index.save("1-0")
            save_s = time.perf_counter() - started
            size = sum(f.stat().st_size for f in Path(tmp).iterdir() if f.is_file()) / 2**20
            del index
            started = time.perf_counter()
            index = TrackletIndex(Path(tmp), dim=args.dim, model="bench", kind=kind, device=args.device, ivf=ivf)
            load_s = time.perf_counter() - started
            structure = "IDMap2,Flat" if kind == "flat" else f"IVF{ivf.nlist},Flat"
            build_rows.append([kind, structure, f"{rate:,.0f}", f"{save_s:.2f}", f"{load_s:.2f}", f"{size:,.0f}"])
            print(build_rows[-1], flush=True)
            for nprobe in [None] if kind == "flat" else probes:
                label = kind if nprobe is None else f"{kind} nprobe={nprobe}"
                if nprobe is not None:
                    index.ivf = dataclasses.replace(ivf, nprobe=nprobe)
                for flt, mask, expected in zip(FILTERS, masks, truth):
                    p50, p95, recall = measure(index, queries, flt, expected)
                    row = [label, flt.name, f"{mask.mean():.2%}", f"{p50:.2f}", f"{p95:.2f}", f"{recall:.3f}"]
                    search_rows.append(row)
                    print(row, flush=True)
            del index

    build_table = markdown_table(
        ["kind", "faiss index", "upserts/s (one at a time)", "save s", "load s", "on disk MiB"], build_rows
    )
    search_table = markdown_table(
        ["kind", "filter", "tracklets passing", "p50 ms", "p95 ms", f"recall@{K} vs exact"], search_rows
    )
    print(build_table, search_table, sep="\n\n")
    if not args.no_record:
        body = (
            f"{args.vectors:,} tracklets of {args.dim}-d synthetic embeddings ({len(centres):,} identities), "
            f"{args.queries} queries of batch 1, k={K}, faiss {faiss.__version__} with {faiss.omp_get_max_threads()} "
            f"OpenMP threads, device {args.device}. The ivf upsert rate includes its one-off training on the first "
            f"{ivf.train_size:,} tracklets.\n\n{build_table}\n\n{search_table}"
        )
        record("index", "Index: FAISS search latency, recall and upsert rate", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
