"""The person-search protocol on hand-made scenes whose answers are computed by hand in each test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.datasets.records import UNLABELED, GalleryRecord, QueryRecord, SceneRecord
from training.evaluation import (
    PersonSearchEvaluator,
    average_precision,
    box_iou,
    evaluate_results_file,
    format_table,
    load_results,
    save_results,
    search_iou_threshold,
    voc_average_precision,
)

BIG = np.array([0, 0, 100, 200], dtype=np.float32)  # w*h/((w+10)(h+10)) > 0.5: threshold 0.5
OTHER = np.array([300, 0, 400, 200], dtype=np.float32)  # a different person in the same image
QUERY_EMB = np.array([1.0, 0.0], dtype=np.float32)


def emb(sim: float) -> np.ndarray:
    """A unit 2-d embedding whose cosine similarity to QUERY_EMB is ``sim``."""
    return np.array([sim, np.sqrt(max(0.0, 1.0 - sim * sim))], dtype=np.float32)


def scene(name: str, *boxes: np.ndarray) -> SceneRecord:
    return SceneRecord(
        name=name,
        path=Path(name),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        pids=np.full(len(boxes), UNLABELED, dtype=np.int64),
    )


def query(*gallery: tuple[str, np.ndarray | None], name: str = "q.jpg") -> QueryRecord:
    return QueryRecord(
        idname="p1",
        name=name,
        box=np.array([0, 0, 50, 100], dtype=np.float32),
        gallery=tuple(GalleryRecord(n, b) for n, b in gallery),
    )


def dets(*items: tuple[np.ndarray, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(box, score, similarity to the query) triples -> boxes (D, 4), scores (D,), embeddings (D, 2)."""
    if not items:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32)
    boxes = np.array([i[0] for i in items], dtype=np.float32)
    scores = np.array([i[1] for i in items], dtype=np.float32)
    embs = np.stack([emb(i[2]) for i in items])
    return boxes, scores, embs


def run_search(
    gallery: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    queries: list[QueryRecord],
    scenes: list[SceneRecord] | None = None,
    det_thresh: float = 0.5,
) -> dict:
    ev = PersonSearchEvaluator(scenes or [], queries, det_thresh)
    for name, (b, s, e) in gallery.items():
        ev.process_gallery(name, b, s, e)
    for i in range(len(queries)):
        ev.process_query(i, QUERY_EMB)
    return ev.evaluate()


# ---------------------------------------------------------------------------------------------------------------
# Metric primitives
# ---------------------------------------------------------------------------------------------------------------


def sklearn_style_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Reference: sum over distinct thresholds t (descending) of (R(t) - R(previous t)) * P(t)."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(y_score.tolist()), reverse=True):
        selected = y_score >= t
        tp = float(np.sum(y_true & selected))
        recall = tp / y_true.sum()
        ap += (recall - prev_recall) * tp / selected.sum()
        prev_recall = recall
    return ap


def test_average_precision_is_mean_precision_at_each_positive():
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0, 1]), np.array([0.9, 0.8])) == pytest.approx(0.5)


def test_average_precision_ranks_tied_scores_together_like_sklearn():
    assert average_precision(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert average_precision(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    for _ in range(50):
        y_true = rng.random(30) < 0.3
        y_true[0] = True
        y_score = rng.integers(0, 8, 30).astype(np.float64)  # many ties
        assert average_precision(y_true, y_score) == pytest.approx(sklearn_style_ap(y_true, y_score))


def test_average_precision_with_many_positives_matches_the_reference():
    rng = np.random.default_rng(1)
    y_true = rng.random(500) < 0.5
    y_score = rng.integers(0, 50, 500).astype(np.float32)
    assert y_true.sum() > 64
    assert average_precision(y_true, y_score) == pytest.approx(sklearn_style_ap(y_true, y_score))


def test_average_precision_is_zero_without_positives():
    assert average_precision(np.array([0, 0]), np.array([0.9, 0.1])) == 0.0


def test_search_iou_threshold_is_lower_only_for_small_boxes():
    assert search_iou_threshold(BIG) == 0.5
    assert search_iou_threshold(np.array([0, 0, 20, 40])) == 0.5  # 800 / 1500 = 0.53, capped at 0.5
    assert search_iou_threshold(np.array([0, 0, 10, 20])) == pytest.approx(200 / (20 * 30))


def test_box_iou_of_known_overlaps():
    iou = box_iou(np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]), np.array([[0, 0, 10, 10]]))
    np.testing.assert_allclose(iou[:, 0], [1.0, 50 / 150, 0.0])


def test_voc_average_precision_uses_the_precision_envelope():
    # TP FP TP over 2 GT: points (0.5, 1), (0.5, 0.5), (1, 2/3) -> 0.5 * 1 + 0.5 * 2/3
    assert voc_average_precision(np.array([1, 0, 1]), 2) == pytest.approx(0.5 + 1 / 3)
    assert voc_average_precision(np.array([0, 1]), 1) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------------------------------------------


def test_perfect_detector_and_embeddings_give_map_one_and_top1_one():
    gallery = {
        "a.jpg": dets((BIG, 0.99, 1.0), (OTHER, 0.99, 0.1)),
        "b.jpg": dets((BIG, 0.99, 1.0)),
        "c.jpg": dets((OTHER, 0.99, 0.0)),
    }
    r = run_search(gallery, [query(("a.jpg", BIG), ("b.jpg", BIG), ("c.jpg", None))])
    assert r["mAP"] == pytest.approx(1.0)
    assert (r["top1"], r["top5"], r["top10"]) == (1.0, 1.0, 1.0)
    assert r["num_queries"] == 1
    assert r["gallery_size"] == 3


def test_true_match_ranked_second_gives_ap_half_and_top1_miss():
    gallery = {"a.jpg": dets((BIG, 0.9, 0.8)), "b.jpg": dets((OTHER, 0.9, 0.9))}
    r = run_search(gallery, [query(("a.jpg", BIG), ("b.jpg", None))])
    assert r["mAP"] == pytest.approx(0.5)
    assert r["top1"] == 0.0
    assert r["top5"] == 1.0


def test_true_match_ranked_sixth_is_a_top10_hit_only():
    gallery = {f"n{i}.jpg": dets((OTHER, 0.9, 0.9 - 0.01 * i)) for i in range(5)}
    gallery["a.jpg"] = dets((BIG, 0.9, 0.5))
    q = query(("a.jpg", BIG), *[(f"n{i}.jpg", None) for i in range(5)])
    r = run_search(gallery, [q])
    assert (r["top1"], r["top5"], r["top10"]) == (0.0, 0.0, 1.0)
    assert r["mAP"] == pytest.approx(1 / 6)


def test_missing_detection_in_one_of_two_positive_images_halves_ap():
    q = query(("a.jpg", BIG), ("b.jpg", BIG), ("c.jpg", None))
    nothing_in_b = {"a.jpg": dets((BIG, 0.9, 0.9)), "b.jpg": dets(), "c.jpg": dets((OTHER, 0.9, 0.1))}
    assert run_search(nothing_in_b, [q])["mAP"] == pytest.approx(0.5)
    b_never_processed = {"a.jpg": dets((BIG, 0.9, 0.9)), "c.jpg": dets((OTHER, 0.9, 0.1))}
    assert run_search(b_never_processed, [q])["mAP"] == pytest.approx(0.5)
    b_detects_someone_else = {"a.jpg": dets((BIG, 0.9, 0.9)), "b.jpg": dets((OTHER, 0.9, 0.2))}
    assert run_search(b_detects_someone_else, [q])["mAP"] == pytest.approx(0.5)


def test_detection_at_iou_045_matches_a_small_box_but_not_a_large_one():
    small = np.array([0, 0, 10, 20], dtype=np.float32)  # threshold 200 / 600 = 1/3
    det_small = np.array([0, 0, 10, 9], dtype=np.float32)  # IoU 90 / 200 = 0.45
    det_big = np.array([0, 0, 100, 90], dtype=np.float32)  # IoU 9000 / 20000 = 0.45
    assert box_iou(det_small[None], small[None])[0, 0] == pytest.approx(0.45)
    assert box_iou(det_big[None], BIG[None])[0, 0] == pytest.approx(0.45)

    r_small = run_search({"a.jpg": dets((det_small, 0.9, 0.9))}, [query(("a.jpg", small))])
    r_big = run_search({"a.jpg": dets((det_big, 0.9, 0.9))}, [query(("a.jpg", BIG))])
    assert (r_small["mAP"], r_small["top1"]) == (1.0, 1.0)
    assert (r_big["mAP"], r_big["top1"]) == (0.0, 0.0)


def test_duplicate_detection_on_the_same_person_counts_as_false_positive():
    shifted = BIG + np.array([2, 2, 2, 2], dtype=np.float32)
    gallery = {
        "a.jpg": dets((BIG, 0.9, 0.9), (shifted, 0.9, 0.8)),
        "b.jpg": dets((BIG, 0.9, 0.7)),
    }
    r = run_search(gallery, [query(("a.jpg", BIG), ("b.jpg", BIG))])
    # ranking TP (a), FP (a's duplicate), TP (b): (1 + 2/3) / 2
    assert r["mAP"] == pytest.approx((1 + 2 / 3) / 2)


def test_true_positive_is_the_most_similar_passing_detection_not_the_best_overlap():
    loose = np.array([0, 0, 100, 130], dtype=np.float32)  # IoU 0.65: passes
    tight = np.array([0, 0, 100, 195], dtype=np.float32)  # IoU 0.975
    gallery = {"a.jpg": dets((tight, 0.9, 0.6), (loose, 0.9, 0.9)), "b.jpg": dets((OTHER, 0.9, 0.8))}
    r = run_search(gallery, [query(("a.jpg", BIG), ("b.jpg", None))])
    # loose (TP, 0.9), b (FP, 0.8), tight (FP, 0.6)
    assert (r["mAP"], r["top1"]) == (1.0, 1.0)


def test_det_thresh_drops_low_scoring_detections_from_search():
    gallery = {"a.jpg": dets((BIG, 0.4, 0.9)), "b.jpg": dets((BIG, 0.9, 0.8))}
    q = query(("a.jpg", BIG), ("b.jpg", BIG))
    assert run_search(gallery, [q], det_thresh=0.5)["mAP"] == pytest.approx(0.5)  # a's match is not detected
    assert run_search(gallery, [q], det_thresh=0.3)["mAP"] == pytest.approx(1.0)

    distractor = {"a.jpg": dets((BIG, 0.9, 0.8)), "b.jpg": dets((OTHER, 0.4, 0.95))}
    q2 = query(("a.jpg", BIG), ("b.jpg", None))
    assert run_search(distractor, [q2], det_thresh=0.5)["top1"] == 1.0
    r = run_search(distractor, [q2], det_thresh=0.3)
    assert (r["mAP"], r["top1"]) == (pytest.approx(0.5), 0.0)


def test_query_without_any_gallery_detection_scores_zero_and_misses():
    r = run_search({"a.jpg": dets((BIG, 0.1, 1.0))}, [query(("a.jpg", BIG), ("b.jpg", None))])
    assert (r["mAP"], r["top1"], r["top10"]) == (0.0, 0.0, 0.0)


def test_map_and_cmc_average_over_queries():
    gallery = {"a.jpg": dets((BIG, 0.9, 0.9)), "b.jpg": dets((OTHER, 0.9, 0.95))}
    hit = query(("a.jpg", BIG))
    second = query(("a.jpg", BIG), ("b.jpg", None))
    r = run_search(gallery, [hit, second])
    assert r["mAP"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["top1"] == pytest.approx(0.5)
    assert r["num_queries"] == 2


def test_embeddings_are_compared_by_cosine_whatever_their_norm():
    ev = PersonSearchEvaluator([], [query(("a.jpg", BIG), ("b.jpg", None))])
    ev.process_gallery("a.jpg", BIG[None], np.array([0.9]), 7.0 * emb(0.9)[None])
    ev.process_gallery("b.jpg", OTHER[None], np.array([0.9]), 0.1 * emb(0.95)[None])
    ev.process_query(0, 3.0 * QUERY_EMB)
    assert ev.evaluate()["top1"] == 0.0  # b is more similar in angle, though a has the larger dot product


def test_evaluator_accepts_torch_tensors():
    import torch

    ev = PersonSearchEvaluator([scene("a.jpg", BIG)], [query(("a.jpg", BIG))])
    ev.process_gallery("a.jpg", torch.tensor(BIG[None]), torch.tensor([0.9]), torch.tensor(emb(1.0)[None]))
    ev.process_query(0, torch.tensor(QUERY_EMB))
    r = ev.evaluate()
    assert (r["mAP"], r["det_ap"], r["det_recall"]) == (1.0, 1.0, 1.0)


def test_evaluate_refuses_queries_without_embedding():
    ev = PersonSearchEvaluator([], [query(("a.jpg", BIG)), query(("a.jpg", BIG))])
    ev.process_query(0, QUERY_EMB)
    with pytest.raises(ValueError, match="1 of 2 queries have no embedding"):
        ev.evaluate()


def test_process_gallery_refuses_mismatched_shapes():
    ev = PersonSearchEvaluator([], [])
    with pytest.raises(ValueError, match="boxes"):
        ev.process_gallery("a.jpg", np.zeros((2, 4)), np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="embeddings"):
        ev.process_gallery("a.jpg", np.zeros((3, 4)), np.zeros(3), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="out of range"):
        ev.process_query(0, QUERY_EMB)


def test_reset_forgets_processed_images_and_queries():
    ev = PersonSearchEvaluator([], [query(("a.jpg", BIG))])
    ev.process_gallery("a.jpg", *dets((BIG, 0.9, 1.0)))
    ev.process_query(0, QUERY_EMB)
    assert ev.evaluate()["mAP"] == 1.0
    ev.reset()
    with pytest.raises(ValueError, match="no embedding"):
        ev.evaluate()
    ev.process_query(0, QUERY_EMB)
    assert ev.evaluate()["mAP"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------


def test_perfect_detector_has_detection_ap_and_recall_one():
    scenes = [scene("a.jpg", BIG, OTHER), scene("b.jpg", BIG)]
    gallery = {"a.jpg": dets((BIG, 0.9, 1.0), (OTHER, 0.8, 0.0)), "b.jpg": dets((BIG, 0.7, 1.0))}
    r = run_search(gallery, [query(("a.jpg", BIG))], scenes)
    assert (r["det_ap"], r["det_recall"]) == (1.0, 1.0)


def test_detection_ap_and_recall_on_a_hand_ranked_case():
    scenes = [scene("a.jpg", BIG, OTHER), scene("b.jpg", BIG)]
    background = np.array([600, 0, 700, 200], dtype=np.float32)
    gallery = {
        "a.jpg": dets((BIG, 0.9, 0), (BIG + 2, 0.8, 0), (background, 0.7, 0), (OTHER, 0.3, 0)),
        "b.jpg": dets((BIG, 0.6, 0)),
    }
    r = run_search(gallery, [query(("a.jpg", BIG))], scenes)
    # score order: TP, FP (duplicate), FP (background), TP, TP (0.3) over 3 GT boxes
    # PR envelope: recall 1/3 at precision 1, then 2/3 and 1 at precision 3/5
    assert r["det_ap"] == pytest.approx(1 / 3 + 2 / 3 * 3 / 5)
    assert r["det_recall"] == pytest.approx(2 / 3)  # the 0.3 detection is below det_thresh


def test_detection_at_iou_045_is_a_miss_even_on_a_small_box():
    small = np.array([0, 0, 10, 20], dtype=np.float32)
    r = run_search(
        {"a.jpg": dets((np.array([0, 0, 10, 9]), 0.9, 1.0))}, [query(("a.jpg", small))], [scene("a.jpg", small)]
    )
    assert (r["det_ap"], r["det_recall"]) == (0.0, 0.0)


def test_unprocessed_scene_counts_its_boxes_as_missed():
    scenes = [scene("a.jpg", BIG), scene("b.jpg", BIG, OTHER)]
    r = run_search({"a.jpg": dets((BIG, 0.9, 1.0))}, [query(("a.jpg", BIG))], scenes)
    assert r["det_recall"] == pytest.approx(1 / 3)
    assert r["det_ap"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------------------
# Results file and table
# ---------------------------------------------------------------------------------------------------------------


def small_protocol() -> tuple[list[SceneRecord], list[QueryRecord], dict]:
    scenes = [scene("a.jpg", BIG, OTHER), scene("b.jpg", BIG), scene("c.jpg", OTHER)]
    queries = [
        query(("a.jpg", BIG), ("b.jpg", BIG), ("c.jpg", None), name="q1.jpg"),
        query(("b.jpg", BIG), ("c.jpg", None), name="q2.jpg"),
    ]
    gallery = {
        "a.jpg": dets((BIG, 0.9, 0.9), (OTHER, 0.2, 0.3)),
        "b.jpg": dets((BIG, 0.7, 0.6)),
        "c.jpg": dets(),
    }
    return scenes, queries, gallery


def save_small(path: Path, gallery: dict, num_queries: int) -> Path:
    names = list(gallery)
    return save_results(
        path,
        names,
        [gallery[n][0] for n in names],
        [gallery[n][1] for n in names],
        [gallery[n][2] for n in names],
        np.tile(QUERY_EMB, (num_queries, 1)),
    )


def test_results_file_round_trip_scores_like_the_evaluator(tmp_path: Path):
    scenes, queries, gallery = small_protocol()
    path = save_small(tmp_path / "results.npz", gallery, len(queries))
    loaded = load_results(path)
    assert loaded.image_names.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert loaded.det_image_index.tolist() == [0, 0, 1]
    assert loaded.det_boxes.dtype == np.float32 and loaded.det_boxes.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.norm(loaded.det_embeddings, axis=1), 1.0, rtol=1e-6)
    assert loaded.query_embeddings.shape == (2, 2)
    for name, (b, s, e) in loaded.per_image().items():
        np.testing.assert_array_equal(b, gallery[name][0])
        np.testing.assert_array_equal(s, gallery[name][1])
        np.testing.assert_allclose(e, gallery[name][2], atol=1e-6)

    from_file = evaluate_results_file(path, scenes, queries, 0.5)
    direct = run_search(gallery, queries, scenes)
    assert from_file == pytest.approx(direct)
    assert from_file["mAP"] == pytest.approx(1.0)


def test_subset_queries_take_their_embeddings_from_the_full_query_list(tmp_path: Path):
    scenes, queries, gallery = small_protocol()
    path = save_small(tmp_path / "results.npz", gallery, len(queries))
    r = evaluate_results_file(path, scenes, queries[1:], reference_queries=queries, subset="Occlusion")
    assert r["num_queries"] == 1
    assert r["subset"] == "Occlusion"
    stranger = query(("a.jpg", BIG), name="elsewhere.jpg")
    with pytest.raises(ValueError, match="not in the reference query list"):
        evaluate_results_file(path, scenes, [stranger], reference_queries=queries)


def test_results_file_with_wrong_query_count_is_refused(tmp_path: Path):
    scenes, queries, gallery = small_protocol()
    path = save_small(tmp_path / "results.npz", gallery, 3)
    with pytest.raises(ValueError, match="3 query embeddings, the protocol has 2 queries"):
        evaluate_results_file(path, scenes, queries)


def write_npz(path: Path, **overrides: object) -> Path:
    arrays: dict[str, object] = {
        "format_version": np.int64(1),
        "image_names": np.array(["a.jpg", "b.jpg"]),
        "det_image_index": np.array([0, 1], dtype=np.int64),
        "det_boxes": np.zeros((2, 4), np.float32),
        "det_scores": np.ones(2, np.float32),
        "det_embeddings": np.ones((2, 2), np.float32),
        "query_embeddings": np.ones((1, 2), np.float32),
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"query_embeddings": None}, "missing keys \\['query_embeddings'\\]"),
        ({"det_scores": np.ones(3, np.float32)}, "det_scores must be \\(D,\\)"),
        ({"det_boxes": np.zeros((2, 5), np.float32)}, "det_boxes must be \\(D, 4\\)"),
        ({"det_embeddings": np.ones((2, 3), np.float32)}, "det_embeddings must be \\(D, E\\)"),
        ({"det_image_index": np.array([0, 2])}, "det_image_index must lie in"),
        ({"image_names": np.array(["a.jpg", "a.jpg"])}, "duplicates"),
        ({"format_version": np.int64(99)}, "format_version 99"),
    ],
)
def test_malformed_results_file_is_refused_with_the_reason(tmp_path: Path, overrides: dict, message: str):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(ValueError, match=message):
        load_results(path)


def test_file_that_is_not_an_npz_is_refused(tmp_path: Path):
    path = tmp_path / "results.npz"
    path.write_text("not numpy")
    with pytest.raises(ValueError, match=r"not a readable \.npz"):
        load_results(path)


def test_save_results_refuses_lists_of_different_lengths(tmp_path: Path):
    with pytest.raises(ValueError, match="one entry per image"):
        save_results(tmp_path / "r.npz", ["a.jpg"], [], [], [], np.ones((1, 2)))


def test_format_table_has_the_paper_columns_in_percent():
    rows = [
        {
            "mAP": 0.755,
            "top1": 0.787,
            "top5": 0.9,
            "top10": 0.95,
            "det_ap": 0.8,
            "det_recall": 0.9,
            "gallery_size": 100,
            "num_queries": 2900,
        },
        {
            "mAP": 0.5,
            "top1": 0.5,
            "top5": 0.6,
            "top10": 0.7,
            "det_ap": 0.8,
            "det_recall": 0.9,
            "gallery_size": 100,
            "num_queries": 187,
            "subset": "Occlusion",
        },
    ]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| protocol | queries | mAP | top-1 | top-5 | top-10 | det AP | recall |"
    assert "| gallery 100 | 2900 | 75.50 | 78.70 | 90.00 | 95.00 | 80.00 | 90.00 |" in lines
    assert any(line.startswith("| Occlusion (gallery 100) | 187 | 50.00") for line in lines)
    assert format_table(rows[0]).count("\n") == 2
    assert "| gallery 100 |" in format_table({**rows[0], "subset": "all"})


class _OracleEmbedder:
    """Embeds a box as its identity's one-hot vector (looked up by the box's coordinates); never detects.

    The ground-truth-box protocol must score such an engine perfectly: every gallery entry is an annotated box.
    """

    def __init__(self, queries: list[QueryRecord]) -> None:
        self.ids: dict[tuple[float, ...], int] = {}
        for k, q in enumerate(queries):
            self.ids[tuple(q.box.tolist())] = k
            for g in q.gallery:
                if g.box is not None:
                    self.ids[tuple(g.box.tolist())] = k
        self.num_ids = len(queries)
        self.dim = self.num_ids + 8
        self.rng = np.random.default_rng(0)

    def detect(self, images: list[np.ndarray]) -> list:
        raise AssertionError("the ground-truth-box protocol must not run the detector")

    def embed(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        out = np.zeros((len(boxes), self.dim), np.float32)
        for i, b in enumerate(boxes):
            k = self.ids.get(tuple(np.asarray(b, np.float32).tolist()))
            if k is None:  # a person who is no query's: a random direction away from every identity axis
                v = self.rng.normal(size=self.dim).astype(np.float32)
                v[: self.num_ids] = 0.0
                out[i] = v / np.linalg.norm(v)
            else:
                out[i, k] = 1.0
        return out


def test_ground_truth_box_protocol_embeds_every_annotated_person_and_skips_the_detector(tiny_world: Path) -> None:
    from training.datasets.cuhk_sysu import CUHKSYSU
    from training.inference import evaluate_engine

    dataset = CUHKSYSU(tiny_world)
    queries = dataset.queries(50)
    (res,) = evaluate_engine(_OracleEmbedder(queries), dataset, (50,), gt_boxes=True, progress=False)  # type: ignore[arg-type]
    assert res["gallery_boxes"] == "annotated"
    assert res["det_recall"] == pytest.approx(1.0) and res["det_ap"] == pytest.approx(1.0)
    assert res["mAP"] == pytest.approx(1.0) and res["top1"] == pytest.approx(1.0)
