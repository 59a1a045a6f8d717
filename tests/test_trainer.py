"""The trainer: schedule, deterministic sampling, exact resume, its outputs, and DDP with identical OIM tables."""

from __future__ import annotations

import csv
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from detector.weights import load_model, save_weights
from training.config import TrainConfig, load_train_config
from training.data import IterationSampler, scenes_covering_identities
from training.datasets.records import SceneRecord
from training.engine import Trainer, build_trainer, lr_factor
from training.synth.world import PRESETS, generate_world

# A network small enough to take a few steps on the CPU in a test.
TINY_MODEL = {
    "min_size": 192,
    "max_size": 256,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 48,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 24,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 16,
}


def tiny_config(root: Path, out: Path, **kw: object) -> TrainConfig:
    raw: dict = {
        "model": "oim-r18-demo",
        "model_overrides": TINY_MODEL,
        "loss": {"kind": "oim", "queue_size": 32},
        "solver": {
            "base_lr": 0.01,
            "max_iters": 4,
            "steps": [3],
            "warmup_iters": 2,
            "images_per_batch": 2,
            "amp": False,
        },
        "data": {"root": str(root), "num_workers": 0, "eval_gallery_size": 50, "eval_max_queries": 4},
        "output_dir": str(out),
        "device": "cpu",
        "log_period": 1,
        "checkpoint_period": 100,
        "eval_period": -1,
    }
    raw.update(kw)
    return TrainConfig(**raw)


def test_learning_rate_warms_up_linearly_then_steps_down() -> None:
    assert lr_factor(0, 10, 0.1, (20,), 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 10, 0.1, (20,), 0.1) == pytest.approx(0.55)
    assert lr_factor(10, 10, 0.1, (20,), 0.1) == pytest.approx(1.0)
    assert lr_factor(25, 10, 0.1, (20, 30), 0.1) == pytest.approx(0.1)
    assert lr_factor(35, 10, 0.1, (20, 30), 0.1) == pytest.approx(0.01)


def test_sampler_resumed_mid_epoch_continues_the_same_stream_and_shards_disjointly() -> None:
    full = IterationSampler(10, seed=3, hflip=True)
    stream = [x for _, x in zip(range(25), iter(full))]
    resumed = [x for _, x in zip(range(12), iter(IterationSampler(10, seed=3, hflip=True, start=13)))]
    assert resumed == stream[13:25]
    assert sorted(i for i, _ in stream[:10]) == list(range(10))  # each epoch is a permutation
    r0 = [i for _, (i, _f) in zip(range(5), iter(IterationSampler(10, 3, False, rank=0, world_size=2)))]
    r1 = [i for _, (i, _f) in zip(range(5), iter(IterationSampler(10, 3, False, rank=1, world_size=2)))]
    assert sorted(r0 + r1) == list(range(10))


def test_covering_scenes_show_every_labeled_identity_and_each_adds_one() -> None:
    def scene(name: str, pids: list[int]) -> SceneRecord:
        return SceneRecord(name, Path(name), np.zeros((len(pids), 4), np.float32), np.array(pids, np.int64))

    scenes = [scene("a", [0, 1, -1]), scene("b", [1, -1]), scene("c", [-1]), scene("d", [2, 0]), scene("e", [1, 2])]
    assert [s.name for s in scenes_covering_identities(scenes)] == ["a", "d"]
    assert scenes_covering_identities([]) == []


def test_bundled_configs_load_and_the_paper_config_has_the_papers_values() -> None:
    cfg = load_train_config("oim-r50-cuhk")
    assert cfg.loss.temperature == 0.1 and cfg.loss.queue_size == 5000 and cfg.loss.num_labeled == 5532
    assert cfg.solver.base_lr == 0.001 and tuple(cfg.solver.steps) == (40000,) and cfg.solver.max_iters == 50000
    assert cfg.solver.images_per_batch == 2
    assert cfg.build_model_config().backbone == "resnet50"
    demo = load_train_config("oim-r18-synth", {"solver.max_iters": 7})
    assert demo.solver.max_iters == 7
    with pytest.raises(FileNotFoundError, match="bundled configs"):
        load_train_config("no-such-config")


def test_resumed_run_ends_bitwise_equal_to_an_uninterrupted_run(tiny_world: Path, tmp_path: Path) -> None:
    straight = Trainer(tiny_config(tiny_world, tmp_path / "a"), progress=False)
    straight.hooks = []
    straight.train()

    first = Trainer(
        tiny_config(
            tiny_world, tmp_path / "b", solver={**tiny_config(tiny_world, tmp_path).solver.model_dump(), "max_iters": 2}
        ),
        progress=False,
    )
    first.hooks = []
    first.train()
    first.save_checkpoint()
    second = Trainer(tiny_config(tiny_world, tmp_path / "b"), progress=False)
    assert second.iteration == 2
    second.hooks = []
    second.train()

    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = straight.id_loss.state_dict(), second.id_loss.state_dict()
    assert all(torch.equal(la[k], lb[k]) for k in la if isinstance(la[k], torch.Tensor))
    assert straight.optimizer.param_groups[0]["lr"] == second.optimizer.param_groups[0]["lr"]


def test_training_run_writes_metrics_plot_checkpoint_and_loadable_weights(tiny_world: Path, tmp_path: Path) -> None:
    cfg = tiny_config(tiny_world, tmp_path / "run", eval_period=0)
    trainer = build_trainer(cfg, progress=False)
    trainer.train()
    out = tmp_path / "run"
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows if r["loss"]] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss"])) for r in rows if r["loss"])
    evals = [r for r in rows if r["mAP"]]
    assert len(evals) == 1 and 0.0 <= float(evals[0]["mAP"]) <= 1.0
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "last_checkpoint.pt").is_file()
    model = load_model(out / "model_final.pt")
    assert model.cfg.min_size == 192
    # A finished run resumed is a no-op: nothing trains again.
    again = build_trainer(cfg, progress=False)
    assert again.iteration == 4


def test_eval_root_scores_another_worlds_test_split(tiny_world: Path, tmp_path: Path) -> None:
    """Train on one world, evaluate on another's protocol (data.eval_root; `personsearch train --eval-data`)."""
    other = tmp_path / "other"
    generate_world(other, seed=1, config=PRESETS["tiny"].model_copy(update={"test_identities": 4}), progress=False)
    raw = tiny_config(tiny_world, tmp_path / "run").model_dump()
    raw["data"].update(eval_root=str(other), eval_max_queries=None)
    trainer = build_trainer(TrainConfig(**raw), progress=False)
    assert trainer.dataset.root != trainer.eval_dataset.root
    assert trainer.dataset.num_train_identities == 8, "the lookup table is sized by the training world"
    (result,) = trainer.evaluate()
    assert result["num_queries"] == 4, "the other world's 4 queries, not the training world's 6"
    same = build_trainer(tiny_config(tiny_world, tmp_path / "run2"), progress=False)
    assert same.eval_dataset is same.dataset


def test_cpu_bf16_option_runs_the_network_in_bf16_and_trains_fp32_weights(tiny_world: Path, tmp_path: Path) -> None:
    base = tiny_config(tiny_world, tmp_path / "run")
    cfg = base.model_copy(update={"solver": base.solver.model_copy(update={"cpu_bf16": True, "max_iters": 2})})
    trainer = build_trainer(cfg, progress=False)
    dtypes: list[torch.dtype] = []
    trainer.model.backbone.body.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # the stem ran under bf16 autocast, once per step
    after = trainer.model.state_dict()
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # the weights stay fp32
    assert not torch.equal(after["backbone.body.conv1.weight"], before["backbone.body.conv1.weight"])
    assert all(np.isfinite(row["loss"]) for row in trainer.history if "loss" in row)
    # Without the option, the same network runs in fp32.
    plain_solver = {**base.solver.model_dump(), "max_iters": 1}
    plain = build_trainer(tiny_config(tiny_world, tmp_path / "plain", solver=plain_solver), progress=False)
    plain.model.backbone.body.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    plain.train()
    assert dtypes[-1] == torch.float32


def test_fine_tuning_starts_from_the_whole_given_network_and_refuses_another_architecture(
    tiny_world: Path, tmp_path: Path
) -> None:
    first = Trainer(tiny_config(tiny_world, tmp_path / "a"), progress=False)
    first.hooks = []
    first.train()
    save_weights(first.model, tmp_path / "a.pt", half=True)

    tuned = Trainer(tiny_config(tiny_world, tmp_path / "b", init_weights=str(tmp_path / "a.pt")), progress=False)
    start, trained = tuned.model.state_dict(), first.model.state_dict()
    assert all(torch.equal(start[k], trained[k].half().float()) for k in trained if trained[k].is_floating_point())
    fresh = Trainer(tiny_config(tiny_world, tmp_path / "c"), progress=False).model.state_dict()
    assert not torch.equal(fresh["roi_heads.box_head.embedding.weight"], start["roi_heads.box_head.embedding.weight"])
    # A resumed checkpoint wins over init_weights: the run continues where it stopped.
    tuned.hooks = []
    tuned.train()
    tuned.save_checkpoint()
    resumed = Trainer(tiny_config(tiny_world, tmp_path / "b", init_weights=str(tmp_path / "a.pt")), progress=False)
    assert resumed.iteration == 4
    now = tuned.model.state_dict()
    assert all(torch.equal(resumed.model.state_dict()[k], now[k]) for k in now)

    with pytest.raises(ValueError, match="does not fit"):
        Trainer(
            tiny_config(
                tiny_world,
                tmp_path / "d",
                model_overrides={**TINY_MODEL, "embedding_dim": 128},
                init_weights=str(tmp_path / "a.pt"),
            ),
            progress=False,
        )
    # Another number of embedding stripes is not another architecture: the projection is expanded to compute the
    # same id-feats (each stripe's weights the old ones over the stripes), and training lets the stripes differ.
    striped = Trainer(
        tiny_config(
            tiny_world,
            tmp_path / "e",
            model_overrides={**TINY_MODEL, "embedding_stripes": 4},
            init_weights=str(tmp_path / "a.pt"),
        ),
        progress=False,
    ).model.state_dict()["roi_heads.box_head.embedding.weight"]
    plain = torch.load(tmp_path / "a.pt", weights_only=False)["state_dict"][
        "roi_heads.box_head.embedding.weight"
    ].float()
    assert striped.shape == (plain.shape[0], 4 * plain.shape[1])
    torch.testing.assert_close(striped.view(plain.shape[0], -1, 4).sum(dim=2), plain)


def test_init_tables_fills_the_lookup_table_from_the_starting_network_before_the_first_step(
    tiny_world: Path, tmp_path: Path
) -> None:
    first = Trainer(tiny_config(tiny_world, tmp_path / "a"), progress=False)
    save_weights(first.model, tmp_path / "a.pt")
    cfg = tiny_config(tiny_world, tmp_path / "b", init_weights=str(tmp_path / "a.pt"), init_tables=True)
    tuned = Trainer(cfg, progress=False)
    tuned.hooks = []
    lut_at_first_step: list[torch.Tensor] = []
    original_step = tuned.step

    def recording_step(images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        if not lut_at_first_step:
            lut_at_first_step.append(tuned.id_loss.lut.clone())
        return original_step(images, targets)

    tuned.step = recording_step  # type: ignore[method-assign]
    tuned.train()

    # What the starting network gives each labeled identity: the mean of its boxes' embeddings, normalised, over
    # the images that show every identity once.
    model = load_model(tmp_path / "a.pt", torch.device("cpu")).eval()
    scenes = scenes_covering_identities(tuned.train_set.scenes)
    assert len(scenes) < len(tuned.train_set.scenes)
    expected = torch.zeros_like(lut_at_first_step[0])
    with torch.no_grad():
        for scene in scenes:
            image = torch.from_numpy(np.array(Image.open(scene.path).convert("RGB"))).permute(2, 0, 1).float() / 255
            feats = model.embed_boxes([image], [torch.as_tensor(scene.boxes).reshape(-1, 4)])[0]
            for f, pid in zip(feats, scene.pids):
                if pid >= 0:
                    expected[int(pid)] += f
    seen = expected.norm(dim=1) > 0
    assert int(seen.sum()) == tuned.id_loss.num_labeled  # every training identity has a box
    torch.testing.assert_close(lut_at_first_step[0], torch.nn.functional.normalize(expected, dim=1), atol=1e-4, rtol=0)
    assert int(tuned.id_loss.queue_len) == tuned.id_loss.queue_size  # the tiny world has more passers-by than slots
    assert tuned.model.training

    # On resume the checkpoint's tables are kept, not refilled.
    tuned.save_checkpoint()
    resumed = Trainer(cfg, progress=False)
    resumed.hooks = []
    resumed.fill_id_tables = lambda: pytest.fail("tables refilled on resume")  # type: ignore[method-assign]
    resumed.train()
    assert torch.equal(resumed.id_loss.lut, tuned.id_loss.lut)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, root: str, out: str, queue: mp.Queue) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        trainer = Trainer(
            tiny_config(
                Path(root), Path(out), solver={"max_iters": 3, "images_per_batch": 1, "amp": False, "warmup_iters": 0}
            ),
            progress=False,
        )
        trainer.hooks = []
        trainer.train()
        queue.put(
            (
                rank,
                # numpy arrays travel by value; tensors would be shared through file descriptors that
                # vanish when this process exits before the parent has read them.
                trainer.id_loss.lut.numpy().copy(),
                trainer.id_loss.queue.numpy().copy(),
                trainer.model.roi_heads.box_head.embedding.weight.detach().numpy().copy(),
            )
        )
    finally:
        dist.destroy_process_group()


def test_ddp_training_keeps_lookup_table_queue_and_weights_identical_on_every_rank(
    tiny_world: Path, tmp_path: Path
) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_ddp_worker, args=(r, 2, port, str(tiny_world), str(tmp_path / "ddp"), queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = dict((r, rest) for r, *rest in (queue.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (lut0, q0, w0), (lut1, q1, w1) = results[0], results[1]
    assert np.array_equal(lut0, lut1) and np.array_equal(q0, q1) and np.array_equal(w0, w1)
    assert np.abs(lut0).sum() > 0  # the tables were actually written
