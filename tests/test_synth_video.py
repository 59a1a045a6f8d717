"""Synthetic surveillance video: the MP4 matches its ground truth, boxes follow people, identities keep the plan."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from personsearch.cli import main
from training.synth.render import Photometric, apply_photometric, render_background
from training.synth.video import (
    CameraGroundTruth,
    CameraSetSummary,
    CameraVideoConfig,
    _Camera,
    _Lens,
    _plan_walkers,
    _render_frame,
    h264_encoder,
    load_ground_truth,
    render_camera_set,
)

SMALL = CameraVideoConfig(width=320, height=240, seconds=3, fps=5)


@pytest.fixture(scope="module")
def camera_set(tmp_path_factory: pytest.TempPathFactory) -> CameraSetSummary:
    out = tmp_path_factory.mktemp("video_seed0")
    return render_camera_set(out, seed=0, cameras=2, watch_identities=3, config=SMALL, progress=False)


def _decode(path: Path) -> tuple[list[np.ndarray], list[float], str]:
    """Every frame (H, W, 3) uint8, its presentation time in seconds, and the codec name."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
        return frames, times, stream.codec_context.name


def _truths(summary: CameraSetSummary) -> dict[str, CameraGroundTruth]:
    return {c.camera: load_ground_truth(c.ground_truth) for c in summary.cameras}


def test_mp4_frames_match_the_ground_truth_in_count_size_and_time(camera_set: CameraSetSummary) -> None:
    assert camera_set.encoder == h264_encoder() == "libx264"
    for camera in camera_set.cameras:
        truth = load_ground_truth(camera.ground_truth)
        frames, times, codec = _decode(camera.video)
        assert codec == "h264"
        assert len(frames) == len(truth.frames) == truth.num_frames == SMALL.num_frames == 15
        assert all(f.shape == (SMALL.height, SMALL.width, 3) for f in frames)
        assert [f.index for f in truth.frames] == list(range(15))
        np.testing.assert_allclose(times, [f.time for f in truth.frames], atol=1e-3)
        np.testing.assert_allclose([f.time for f in truth.frames], np.arange(15) / SMALL.fps)


def test_boxes_lie_inside_the_frame_and_cover_the_drawn_person(camera_set: CameraSetSummary) -> None:
    checked = 0
    for camera in camera_set.cameras:
        truth = load_ground_truth(camera.ground_truth)
        frames, _, _ = _decode(camera.video)
        # The empty scene as this camera records it: everything but the people.
        empty = np.asarray(Image.open(camera.ground_truth.parent / truth.background), dtype=np.float32)
        for frame, frame_truth in zip(frames, truth.frames):
            diff = np.abs(frame.astype(np.float32) - empty).mean(axis=2)
            anyone = np.zeros(diff.shape, bool)
            for person in frame_truth.people:
                x1, y1, x2, y2 = person.box
                assert 0 <= x1 < x2 <= truth.width and 0 <= y1 < y2 <= truth.height, person
                assert 0 < person.visible <= 1
                anyone[y1:y2, x1:x2] = True
            background_noise = float(diff[~anyone].mean())  # sensor noise and compression only
            assert background_noise < 8
            for person in frame_truth.people:
                if person.identity is None or person.visible < 0.5:
                    continue
                x1, y1, x2, y2 = person.box
                assert float(diff[y1:y2, x1:x2].mean()) > background_noise + 8, (camera.camera, frame_truth.index)
                checked += 1
    assert checked >= 10


def test_every_named_identity_appears_on_its_planned_cameras(camera_set: CameraSetSummary) -> None:
    index = json.loads((camera_set.out_dir / "cameras.json").read_text())
    assert [c["camera"] for c in index["cameras"]] == ["cam0", "cam1"]
    for entry in index["cameras"]:
        assert (camera_set.out_dir / entry["video"]).is_file()
        assert (camera_set.out_dir / entry["ground_truth"]).is_file()
    truths = _truths(camera_set)
    assert [i["name"] for i in index["identities"]] == list(camera_set.identities) == ["p1", "p2", "p3"]
    for identity in index["identities"]:
        name = identity["name"]
        assert identity["cameras"] == list(camera_set.plan[name])
        assert len(identity["cameras"]) == 2  # with two cameras, everyone passes both
        for cam in identity["cameras"]:
            seen = [f.index for f in truths[cam].frames for p in f.people if p.identity == name]
            assert seen, f"{name} planned on {cam} but never visible there"
            track = next(t for t in truths[cam].tracks if t.identity == name)
            assert (track.first_frame, track.last_frame) == (min(seen), max(seen))


def test_passersby_include_lookalikes_of_named_identities(camera_set: CameraSetSummary) -> None:
    tracks = [t for truth in _truths(camera_set).values() for t in truth.tracks]
    unlabeled = [t for t in tracks if t.identity is None]
    assert len(unlabeled) == 2 * SMALL.passersby
    assert any(t.lookalike_of in camera_set.identities for t in unlabeled)


def test_search_photo_is_not_a_crop_of_any_video_frame(camera_set: CameraSetSummary) -> None:
    index = json.loads((camera_set.out_dir / "cameras.json").read_text())
    truths = _truths(camera_set)
    decoded = {c.camera: _decode(c.video)[0] for c in camera_set.cameras}
    for identity in index["identities"]:
        photo = Image.open(camera_set.out_dir / identity["photo"]).convert("RGB")
        x1, y1, x2, y2 = identity["photo_box"]
        assert 0 <= x1 < x2 <= photo.width and 0 <= y1 < y2 <= photo.height
        person = photo.crop((x1, y1, x2, y2))
        for cam, truth in truths.items():
            for frame_truth in truth.frames:
                for p in frame_truth.people:
                    if p.identity != identity["name"]:
                        continue
                    bx1, by1, bx2, by2 = p.box
                    crop = decoded[cam][frame_truth.index][by1:by2, bx1:bx2].astype(np.float32)
                    same_size = np.asarray(person.resize((bx2 - bx1, by2 - by1)), dtype=np.float32)
                    assert np.abs(crop - same_size).mean() > 10, (identity["name"], cam, frame_truth.index)


def test_same_seed_gives_the_same_ground_truth(camera_set: CameraSetSummary, tmp_path: Path) -> None:
    again = render_camera_set(tmp_path / "again", seed=0, cameras=2, watch_identities=3, config=SMALL, progress=False)
    for first, second in zip(camera_set.cameras, again.cameras):
        assert first.ground_truth.read_text() == second.ground_truth.read_text()
    assert (camera_set.out_dir / "cameras.json").read_text() == (again.out_dir / "cameras.json").read_text()
    other = render_camera_set(tmp_path / "other", seed=1, cameras=2, watch_identities=3, config=SMALL, progress=False)
    assert other.cameras[0].ground_truth.read_text() != camera_set.cameras[0].ground_truth.read_text()


def test_a_named_identity_is_never_on_two_cameras_at_once(tmp_path: Path) -> None:
    # Default geometry and a 20 s video, at a size and rate that render in a moment.
    config = CameraVideoConfig(width=160, height=120, seconds=20, fps=2)
    summary = render_camera_set(tmp_path, seed=3, cameras=2, watch_identities=3, config=config, progress=False)
    truths = _truths(summary)
    for name in summary.identities:
        spans: list[tuple[int, int]] = []
        for truth in truths.values():
            track = next(t for t in truth.tracks if t.identity == name)
            assert track.first_frame is not None and track.last_frame is not None
            spans.append((track.first_frame, track.last_frame))
        first, second = sorted(spans)
        assert first[1] < second[0], f"{name} is on both cameras in frames {second[0]}..{first[1]}"


def test_frames_equal_a_whole_frame_camera_pass() -> None:
    # Each frame re-develops only the pixels around people; it must match developing the whole frame.
    config = CameraVideoConfig(width=160, height=120, seconds=2, fps=2, passersby=6)
    for seed, blur in ((0, 0.0), (1, 1.0), (2, 1.6)):
        rng = np.random.default_rng(seed)
        background = render_background(rng, config.width, config.height)
        camera = _Camera.random(rng, config, background.horizon_y)
        params = Photometric(
            brightness=10.0,
            contrast=1.2,
            cast=(1.05, 0.95, 1.0),
            shade=0.3,
            shade_angle=1.0,
            blur_sigma=blur,
            noise_sigma=3.0,
            downscale=1.0,
        )
        walkers = _plan_walkers(rng, camera, config, [], [], [])
        lens = _Lens.for_scene(params, background.image)
        for t in (0.0, 1.0):
            raw, _, drawn = _render_frame(background.image, camera, walkers, [], t)
            developed = lens.develop(raw, drawn, np.random.default_rng(9))
            whole = apply_photometric(raw, params, np.random.default_rng(9), mean=lens.mean)
            np.testing.assert_array_equal(developed, np.asarray(whole))


def test_config_refuses_odd_frame_sizes_and_empty_ranges() -> None:
    with pytest.raises(ValidationError, match="even"):
        CameraVideoConfig(width=321)
    with pytest.raises(ValidationError, match="walking_speed"):
        CameraVideoConfig(walking_speed=(1.5, 1.0))


def test_synth_video_command_writes_a_camera_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["synth-video", "--out", str(tmp_path), "--seed", "2", "--cameras", "1", "--identities", "1"]
    args += ["--seconds", "1", "--fps", "4", "--width", "160", "--height", "120", "--set", "passersby=2"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["identities"] == ["p1"] and summary["encoder"] == "libx264"
    truth = load_ground_truth(tmp_path / "cam0.json")
    assert (truth.width, truth.height, truth.fps, truth.num_frames) == (160, 120, 4, 4)
    assert len(truth.tracks) == 3
    assert (tmp_path / "photos" / "p1.jpg").is_file()
