"""The personsearch command: synth, eval (model and saved results), export, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.io import loadmat

from detector.config import ModelConfig, get_model_config
from detector.model import build_model
from detector.weights import save_weights
from personsearch.cli import main


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random network at a small input size: the CLI plumbing does not need a trained one."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**get_model_config("oim-r18-demo").model_dump(), "min_size": 192, "max_size": 256})
    return save_weights(build_model(cfg), tmp_path_factory.mktemp("w") / "w.pt", half=True)


def test_synth_command_writes_the_cuhk_sysu_layout(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--seed", "1", "--preset", "tiny"]) == 0
    assert any((tmp_path / "Image" / "SSM").glob("s*.jpg"))
    assert "TestG50" in loadmat(tmp_path / "annotation/test/train_test/TestG50.mat")
    assert "Img" in loadmat(tmp_path / "annotation/Images.mat")


def test_eval_writes_protocol_keys_and_a_saved_results_file_scores_the_same(
    tiny_world: Path, small_weights: Path, tmp_path: Path
) -> None:
    out, saved = tmp_path / "out.json", tmp_path / "results.npz"
    args = ["eval", "--data", str(tiny_world), "--gallery-size", "50", "--weights", str(small_weights)]
    assert main([*args, "--json", str(out), "--save-results", str(saved)]) == 0
    res = json.loads(out.read_text())
    for key in ("mAP", "top1", "top5", "top10", "det_ap", "det_recall", "gallery_size"):
        assert key in res
    assert res["gallery_size"] == 50 and 0.0 <= res["mAP"] <= 1.0
    again = tmp_path / "again.json"
    assert (
        main(["eval", "--data", str(tiny_world), "--gallery-size", "50", "--results", str(saved), "--json", str(again)])
        == 0
    )
    res2 = json.loads(again.read_text())
    for key in ("mAP", "top1", "top5", "top10", "det_ap", "det_recall"):
        assert res2[key] == pytest.approx(res[key], abs=1e-6)


def test_eval_with_ground_truth_boxes_scores_identification_alone(
    tiny_world: Path, small_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gt.json"
    args = ["eval", "--data", str(tiny_world), "--gallery-size", "50", "--weights", str(small_weights)]
    assert main([*args, "--gt-boxes", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gallery_boxes"] == "annotated"
    assert res["det_recall"] == pytest.approx(1.0)  # every annotated person is in the gallery, found by definition
    assert 0.0 <= res["mAP"] <= 1.0
    # A saved results file holds detections, not a model to embed the annotated boxes with.
    assert main(["eval", "--data", str(tiny_world), "--results", str(tmp_path / "r.npz"), "--gt-boxes"]) == 2


def test_eval_reports_a_missing_dataset_as_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", "--data", str(tmp_path / "nowhere"), "--results", str(tmp_path / "r.npz")]) == 2


def test_export_command_writes_detection_and_query_graphs(small_weights: Path, tmp_path: Path) -> None:
    assert main(["export", "--weights", str(small_weights), "--out", str(tmp_path / "onnx")]) == 0
    manifest = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert (tmp_path / "onnx" / manifest["detect"]).stat().st_size > 1_000_000
    assert (tmp_path / "onnx" / manifest["query"]).stat().st_size > 1_000_000
    assert manifest["config"]["min_size"] == 192


def test_eval_and_export_take_an_input_size(tiny_world: Path, small_weights: Path, tmp_path: Path) -> None:
    assert (
        main(["export", "--weights", str(small_weights), "--out", str(tmp_path / "onnx"), "--input-size", "160", "224"])
        == 0
    )
    manifest = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert (manifest["config"]["min_size"], manifest["config"]["max_size"]) == (160, 224)
    args = ["eval", "--data", str(tiny_world), "--gallery-size", "50", "--weights", str(small_weights)]
    small, native = tmp_path / "small.json", tmp_path / "native.json"
    assert main([*args, "--gt-boxes", "--input-size", "96", "128", "--json", str(small)]) == 0
    assert main([*args, "--gt-boxes", "--input-size", "300", "400", "--json", str(native)]) == 0
    # The same random network embeds the same boxes differently at another size (it is convolutional, not blind).
    assert json.loads(small.read_text())["mAP"] != json.loads(native.read_text())["mAP"]
    # A cap below the shorter side, and a saved results file (no model to resize), are refused.
    assert main([*args, "--input-size", "300", "200"]) == 2
    assert (
        main(["eval", "--data", str(tiny_world), "--results", str(tmp_path / "r.npz"), "--input-size", "96", "128"])
        == 2
    )


def test_calibrate_will_not_save_a_threshold_measured_at_another_input_size(
    small_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(f"engine: {{kind: torch, weights: {small_weights}, input_size: [160, 224]}}\n")
    before = small_weights.read_bytes()
    assert main(["watchlist", "--config", str(cfg), "calibrate", "--data", str(tmp_path), "--save"]) == 2
    assert "watchlist.default_threshold" in caplog.text
    assert small_weights.read_bytes() == before


def test_curves_compares_runs_and_names_the_keys_a_run_has(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for name, scale in (("a", 1.0), ("b", 0.5)):
        (tmp_path / name).mkdir()
        rows = ["iteration,loss,loss_id,mAP"] + [f"{i},{scale * 9 / i},{scale * 8 / i}," for i in range(1, 30)]
        (tmp_path / name / "metrics.csv").write_text("\n".join([*rows, "30,1.0,,0.4"]) + "\n")
    out = tmp_path / "figs" / "loss_id.png"
    assert (
        main(
            [
                "curves",
                f"empty table={tmp_path / 'a'}",
                str(tmp_path / "b"),
                "--smooth",
                "5",
                "--mark",
                "8.3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["curves", str(tmp_path / "a"), "--key", "det_ap", "--out", str(out)]) == 2
    assert "never logged 'det_ap'; it has loss, loss_id, mAP" in caplog.text
    assert main(["curves", str(tmp_path), "--out", str(out)]) == 2
    assert "has no metrics.csv" in caplog.text
