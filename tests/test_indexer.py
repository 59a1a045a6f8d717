"""The indexer: tracklet events -> FAISS index, snapshots with their stream position, replay after a crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis

from index.service import IndexerOptions, IndexerService
from personsearch.streams import Keys, TrackletEvent, publish

D = 32


def event(i: int, kind: str = "update", frames: int = 5) -> TrackletEvent:
    v = np.random.default_rng(i).standard_normal(D)
    return TrackletEvent(
        event=kind,  # type: ignore[arg-type]
        tracklet_id=f"cam{i % 2}:{i}:0",
        camera=f"cam{i % 2}",
        model="m",
        start_ts=1000.0 + i,
        end_ts=1010.0 + i,
        frames=frames,
        best_box=(1.0, 2.0, 30.0, 90.0),
        best_score=0.9,
        best_seq=i,
        embedding=list(v / np.linalg.norm(v)),
        snapshot=b"\xff\xd8jpeg",
    )


def test_a_restarted_indexer_replays_from_its_snapshot_with_nothing_lost_or_doubled(
    r: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    opts = IndexerOptions(directory=tmp_path / "index", dim=D, save_every=100, save_period_s=1e9, retention_s=1e12)
    for i in range(6):
        publish(r, keys.tracklets, event(i, "open", 1))
        publish(r, keys.tracklets, event(i, "update", 5))
    first = IndexerService(r, keys, opts, model="m")
    first.step(block_ms=10)
    first.save()  # a periodic snapshot covering the first 12 events
    saved_at = first.index.position
    for i in range(4, 10):  # updates of indexed tracklets and new ones, applied but not yet saved
        publish(r, keys.tracklets, event(i, "update", 5))
    first.step(block_ms=10)
    assert len(first.index) == 10 and first.unsaved == 6
    del first  # killed: no final save
    for i in range(10, 14):
        publish(r, keys.tracklets, event(i, "open", 1))
    again = IndexerService(r, keys, opts, model="m")
    assert again.position == saved_at
    while again.step(block_ms=10):
        pass
    assert len(again.index) == 14
    for i in (0, 9, 13):  # every tracklet once, its latest state, findable by its own embedding
        e = event(i)
        hits = again.index.search(np.asarray(e.embedding, np.float32), k=3)
        assert hits[0].record.tracklet_id == e.tracklet_id and hits[0].score > 0.999
        assert sum(h.record.tracklet_id == e.tracklet_id for h in hits) == 1
    assert again.index.get("cam1:9:0")[0].frames == 5  # type: ignore[index]


def test_retention_deletes_tracklets_that_ended_before_the_window(r: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    import time

    opts = IndexerOptions(directory=tmp_path / "index", dim=D, retention_s=3600, retention_check_s=0)
    old, new = event(1), event(2)
    new = new.model_copy(update={"start_ts": time.time() - 60, "end_ts": time.time() - 30})
    publish(r, keys.tracklets, old)
    publish(r, keys.tracklets, new)
    indexer = IndexerService(r, keys, opts, model="m")
    indexer.step(block_ms=10)
    assert indexer.index.get(old.tracklet_id) is None and indexer.index.get(new.tracklet_id) is not None


def test_a_new_indexer_writes_an_empty_snapshot_at_once(r: redis.Redis, keys: Keys, tmp_path: Path) -> None:
    """Searches, and the API's readiness, find an index before the first tracklet is indexed."""
    import threading

    from index.search import IndexReader

    opts = IndexerOptions(directory=tmp_path / "index", dim=D, save_period_s=3600)
    indexer = IndexerService(r, keys, opts, model="m")
    stop = threading.Event()
    thread = threading.Thread(target=indexer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        reader = IndexReader(tmp_path / "index", D, "m", check_period_s=0.0)
        for _ in range(100):
            if reader.index() is not None:
                break
            stop.wait(0.05)
        index = reader.index()
        assert index is not None and len(index) == 0 and index.position == "0-0"
    finally:
        stop.set()
        thread.join(10)


def test_the_ivf_shape_of_the_settings_reaches_the_indexer_and_the_reader(tmp_path: Path) -> None:
    from index.search import IndexReader
    from index.store import TrackletIndex
    from personsearch.settings import IndexSettings

    settings = IndexSettings(kind="ivf", nlist=16, nprobe=64)
    opts = settings.options(tmp_path / "index", D)
    assert opts.ivf is not None and (opts.ivf.nlist, opts.ivf.nprobe, opts.ivf.train_size) == (16, 16, 1024)
    index = TrackletIndex(opts.directory, D, "m", kind="ivf", ivf=opts.ivf)
    assert index.ivf == opts.ivf
    index.save(position="0-0")
    reader = IndexReader(opts.directory, D, "m", check_period_s=0.0, ivf=IndexSettings(nprobe=8).ivf())
    loaded = reader.index()
    assert loaded is not None and loaded.ivf.nprobe == 8
