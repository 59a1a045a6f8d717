"""The joint network: shapes and units of its outputs, training outputs, weight files, engines and ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detector.config import get_model_config
from detector.engine import OnnxRuntimeEngine, TorchEngine, load_engine
from detector.export import export_onnx
from detector.model import OIMNet, TrainingOutput, build_model
from detector.weights import DEMO_WEIGHTS, expand_stripes, load_model, save_weights


@pytest.fixture(scope="module")
def model() -> OIMNet:
    """The bundled demo model when present (a trained network makes parity meaningful), else a seeded random one."""
    if DEMO_WEIGHTS.is_file():
        return load_model(DEMO_WEIGHTS)
    torch.manual_seed(0)
    return build_model(get_model_config("oim-r18-demo")).eval()


@pytest.fixture(scope="module")
def frames(tiny_world: Path) -> list[np.ndarray]:
    """Real synthetic scenes at two sizes (the second resized, so the graphs see another input shape)."""
    from PIL import Image

    paths = sorted((tiny_world / "Image" / "SSM").glob("*.jpg"))[:2]
    a = np.asarray(Image.open(paths[0]).convert("RGB"))
    b = np.asarray(Image.open(paths[1]).convert("RGB").resize((500, 360)))
    return [a, b]


def test_inference_gives_boxes_in_original_pixels_scores_and_unit_embeddings(model: OIMNet) -> None:
    engine = TorchEngine(model)
    images = [np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(300, 500), (720, 960)]]
    dets = engine.detect(images)
    assert len(dets) == 2
    for det, img in zip(dets, images):
        assert det.boxes.shape[1] == 4 and det.embeddings.shape == (len(det), 256)
        if len(det):
            assert det.boxes[:, 2].max() <= img.shape[1] + 1e-3 and det.boxes[:, 3].max() <= img.shape[0] + 1e-3
            assert np.all(det.boxes[:, 2] > det.boxes[:, 0]) and np.all(det.boxes[:, 3] > det.boxes[:, 1])
            np.testing.assert_allclose(np.linalg.norm(det.embeddings, axis=1), 1.0, atol=1e-4)
            assert np.all((det.scores >= 0) & (det.scores <= 1))


def test_training_forward_returns_detection_losses_and_foreground_identity_features() -> None:
    torch.manual_seed(0)
    net = build_model(get_model_config("oim-r18-demo")).train()
    images = [torch.rand(3, 240, 320)]
    targets = [
        {
            "boxes": torch.tensor([[20.0, 30.0, 70.0, 200.0], [150.0, 40.0, 200.0, 220.0]]),
            "pids": torch.tensor([4, -1]),
        }
    ]
    out = net(images, targets)
    assert isinstance(out, TrainingOutput)
    assert set(out.losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    # Ground-truth boxes join the proposals, so both persons are among the foreground RoIs, with their labels.
    assert {4, -1} <= set(out.id_labels.tolist()) and set(out.id_labels.tolist()) <= {4, -1}
    assert out.id_features.shape == (len(out.id_labels), 256)
    sum(out.losses.values()).backward(retain_graph=True)
    assert net.roi_heads.box_head.embedding.weight.grad is None  # id-feats get gradients from the id loss only
    (out.id_features.sum()).backward()
    assert net.roi_heads.box_head.embedding.weight.grad is not None


def test_query_embedding_is_unit_norm_and_depends_on_the_box(model: OIMNet) -> None:
    engine = TorchEngine(model)
    img = np.random.default_rng(1).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    emb = engine.embed(img, np.array([[10, 20, 80, 200], [300, 100, 380, 400]], np.float32))
    assert emb.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert float(emb[0] @ emb[1]) < 0.9999


def test_engines_refuse_bad_images_and_boxes(model: OIMNet) -> None:
    engine = TorchEngine(model)
    with pytest.raises(ValueError, match="RGB image"):
        engine.detect([np.zeros((10, 10), np.uint8)])
    with pytest.raises(ValueError, match="x2 > x1"):
        engine.embed(np.zeros((50, 50, 3), np.uint8), np.array([[10, 10, 5, 20]], np.float32))


def test_weights_file_round_trips_in_half_precision(tmp_path: Path, model: OIMNet) -> None:
    path = save_weights(model, tmp_path / "w.pt", half=True)
    again = load_model(path)
    img = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    a, b = (
        TorchEngine(model).embed(img, np.array([[10, 10, 60, 200]], np.float32)),
        TorchEngine(again).embed(img, np.array([[10, 10, 60, 200]], np.float32)),
    )
    assert float((a * b).sum()) > 0.999


def test_weights_loader_rejects_other_files(tmp_path: Path) -> None:
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a personsearch weights file"):
        load_model(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def _match(a_boxes: np.ndarray, b_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    iou = box_iou(torch.from_numpy(a_boxes), torch.from_numpy(b_boxes)).numpy()
    j = iou.argmax(axis=1)
    return j, iou[np.arange(len(a_boxes)), j]


def test_onnxruntime_matches_torch_on_boxes_and_embeddings(
    tmp_path: Path, model: OIMNet, frames: list[np.ndarray]
) -> None:
    export_onnx(model, tmp_path / "onnx")
    ref, ort = TorchEngine(model), OnnxRuntimeEngine(tmp_path / "onnx")
    for frame in frames:  # two input sizes through the same dynamic-size graph
        a, b = ref.detect([frame])[0], ort.detect([frame])[0]
        assert len(a) > 0
        # Boxes whose score sits at the threshold may flip; everything clearly above must agree.
        sure = a.scores > model.cfg.box_score_thresh + 0.01
        j, iou = _match(a.boxes[sure], b.boxes)
        assert np.all(iou >= 0.99)
        cos = (a.embeddings[sure] * b.embeddings[j]).sum(axis=1)
        assert np.all(cos >= 0.999)
        np.testing.assert_allclose(a.scores[sure], b.scores[j], atol=1e-3)
        boxes = a.boxes[:3] if len(a) else np.array([[10, 10, 60, 150]], np.float32)
        q_ref, q_ort = ref.embed(frame, boxes), ort.embed(frame, boxes)
        assert np.all((q_ref * q_ort).sum(axis=1) >= 0.999)


def test_engine_threads_setting_reaches_the_runtimes(
    tmp_path: Path, model: OIMNet, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    from personsearch.settings import EngineSettings

    export_onnx(model, tmp_path / "onnx")
    one = EngineSettings(kind="onnxruntime", onnx_dir=tmp_path / "onnx", threads=1).load()
    default = EngineSettings(kind="onnxruntime", onnx_dir=tmp_path / "onnx").load()
    assert isinstance(one, OnnxRuntimeEngine) and isinstance(default, OnnxRuntimeEngine)
    assert one.detect_session.get_session_options().intra_op_num_threads == 1
    assert default.detect_session.get_session_options().intra_op_num_threads == 0  # the runtime's choice
    a, b = one.detect(frames[:1])[0], default.detect(frames[:1])[0]
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # the real call would change every later test
    TorchEngine(model, threads=3)
    TorchEngine(model)
    assert calls == [3]
    with pytest.raises(ValueError):
        EngineSettings(threads=-1)


def test_onnx_engine_names_the_missing_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="personsearch export"):
        OnnxRuntimeEngine(tmp_path)
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("tensorflow")


def test_a_cpu_onnxruntime_shadowing_the_gpu_build_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from importlib import metadata

    from detector import engine as engine_module

    class Dist:
        def __init__(self, name: str) -> None:
            self.metadata = {"Name": name}

    monkeypatch.setattr(metadata, "distributions", lambda: [Dist("onnxruntime"), Dist("onnxruntime-gpu")])
    with caplog.at_level("WARNING", logger="detector.engine"):
        engine_module._warn_on_shadowed_gpu_build(["CPUExecutionProvider"])
        assert "shadows it" in caplog.text
        caplog.clear()
        engine_module._warn_on_shadowed_gpu_build(["CUDAExecutionProvider", "CPUExecutionProvider"])
        monkeypatch.setattr(metadata, "distributions", lambda: [Dist("onnxruntime")])
        engine_module._warn_on_shadowed_gpu_build(["CPUExecutionProvider"])
    assert caplog.text == ""


def test_an_input_size_replaces_the_weights_files_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.engine import onnx_cache_dir
    from detector.weights import read_weights
    from personsearch.settings import EngineSettings

    own, resized = load_model(), load_model(input_size=(416, 704))
    cfg = read_weights(DEMO_WEIGHTS)["config"]
    assert (own.cfg.min_size, own.cfg.max_size) == (cfg["min_size"], cfg["max_size"]) != (416, 704)
    assert (resized.cfg.min_size, resized.cfg.max_size) == (416, 704)
    assert resized.transform.min_size == (416,) and resized.transform.max_size == 704
    for name, value in own.state_dict().items():  # the same weights: only the resize differs
        assert torch.equal(value, resized.state_dict()[name]), name
    for bad in ((480,), (480, 400), (16, 64)):
        with pytest.raises(ValueError, match="input size"):
            load_model(input_size=bad)  # type: ignore[arg-type]
    engine = EngineSettings(kind="torch", input_size=(480, 800)).load()
    assert isinstance(engine, TorchEngine) and engine.model.cfg.min_size == 480
    # An export has its resize inside its graphs: a size cannot be laid over it, and each size is cached apart.
    with pytest.raises(ValueError, match="export again"):
        load_engine("onnxruntime", onnx_dir=tmp_path, input_size=(480, 800))
    with pytest.raises(ValueError, match="export again"):
        EngineSettings(kind="onnxruntime", onnx_dir=tmp_path, input_size=(480, 800))
    monkeypatch.setenv("PERSONSEARCH_CACHE", str(tmp_path))
    assert onnx_cache_dir(DEMO_WEIGHTS) != onnx_cache_dir(DEMO_WEIGHTS, (480, 800))
    assert onnx_cache_dir(DEMO_WEIGHTS, (480, 800)).name.endswith("-480x800")


def _striped(model: OIMNet, stripes: int) -> OIMNet:
    """``model`` rebuilt with ``stripes`` embedding stripes, its weights expanded as a fine-tuning run loads them."""
    cfg = model.cfg.model_dump()
    net = OIMNet(
        type(model.cfg)(**{**cfg, "embedding_stripes": stripes, "pretrained": "none", "backbone_weights": None})
    )
    state = expand_stripes(model.state_dict(), model.cfg.embedding_stripes, stripes)
    net.load_state_dict(state)
    return net.eval()


def test_embedding_stripes_start_as_the_global_average(model: OIMNet, frames: list[np.ndarray]) -> None:
    striped = _striped(model, 4)
    assert striped.roi_heads.box_head.embedding.in_features == 4 * model.roi_heads.box_head.embedding.in_features
    a, b = TorchEngine(model).detect(frames[:1])[0], TorchEngine(striped).detect(frames[:1])[0]
    assert len(a) > 0 and len(a) == len(b)  # the detector's outputs do not depend on the stripes
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
    assert np.all((a.embeddings * b.embeddings).sum(axis=1) >= 0.9999)  # expanded: the same id-feats


def test_striped_id_feats_see_where_on_the_body_a_feature_is() -> None:
    """A map and its upside-down copy have the same global average, so one stripe cannot tell them apart; four can."""
    from collections import OrderedDict

    from torch import nn

    from detector.model import IdentificationHead

    def head(stripes: int) -> IdentificationHead:
        trunk = nn.Sequential(OrderedDict(layer4=nn.Identity(), pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
        return IdentificationHead(trunk, 8, 16, embedding_bn=False, stripes=stripes).eval()

    torch.manual_seed(0)
    conv5 = torch.rand(1, 8, 4, 4)
    pair = torch.cat([conv5, conv5.flip(2)])
    with torch.no_grad():
        one, four = head(1).embed(pair), head(4).embed(pair)
        logits, _, _ = head(4)(pair)
    assert float(one[0] @ one[1]) > 0.9999
    assert float(four[0] @ four[1]) < 0.99
    torch.testing.assert_close(logits[0], logits[1])  # detection still reads the global average


def test_embedding_stripes_must_divide_the_conv5_map() -> None:
    cfg = get_model_config("oim-r18-demo")
    assert type(cfg)(**{**cfg.model_dump(), "embedding_stripes": 4}).embedding_stripes == 4
    with pytest.raises(ValueError, match="must divide the conv5 map's height"):
        type(cfg)(**{**cfg.model_dump(), "roi_output_size": 14, "embedding_stripes": 2})
    with pytest.raises(ValueError, match="not a multiple"):
        expand_stripes({"roi_heads.box_head.embedding.weight": torch.zeros(4, 6)}, 2, 3)


def test_a_striped_network_exports_and_onnxruntime_matches_torch(
    tmp_path: Path, model: OIMNet, frames: list[np.ndarray]
) -> None:
    striped = _striped(model, 2)
    head = striped.roi_heads.box_head
    with torch.no_grad():  # make the stripes differ, as training does
        head.embedding.weight.mul_(torch.tensor([0.5, 1.5]).repeat(head.embedding.in_features // 2))
    export_onnx(striped, tmp_path / "onnx")
    ref, ort = TorchEngine(striped), OnnxRuntimeEngine(tmp_path / "onnx")
    for frame in frames:
        a, b = ref.detect([frame])[0], ort.detect([frame])[0]
        sure = a.scores > striped.cfg.box_score_thresh + 0.01
        assert sure.any()
        j, iou = _match(a.boxes[sure], b.boxes)
        assert np.all(iou >= 0.99)
        assert np.all((a.embeddings[sure] * b.embeddings[j]).sum(axis=1) >= 0.999)
        boxes = a.boxes[:3]
        assert np.all((ref.embed(frame, boxes) * ort.embed(frame, boxes)).sum(axis=1) >= 0.999)
