"""Data-parallel training on this machine: 2 real worker processes for torch (torch.distributed.run, DDP, gloo)
and for Keras (MultiWorkerMirroredStrategy, TF_CONFIG on localhost ports).

Nothing here is mocked: the workers are real processes, they rendezvous on 127.0.0.1 and average
gradients, and rank 0 (the chief) writes a real baseline variant. Quality is compared with one process
at the same global batch and seed, at the issue's bounds: final validation accuracy within 1 pp and final
training loss within 10 %. Both hold because the workers see exactly the global batches one process sees
(each rank its part of every batch, gradients averaged): the runs differ only by float summation order.
"""

import time

import numpy as np
import pytest

from kfopt import config, variant
from kfopt.errors import ConfigError, ModelError
from kfopt.models import torch_ddp, torch_train, workers as workers_mod

TRAIN = dict(architecture="digits_cnn", epochs=4, batch_size=32, learning_rate=2e-3, patience=0, seed=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same data, seed and global batch trained by 1 process and by 2 DDP workers (~30 s)."""
    from kfopt.data import preprocess

    root = tmp_path_factory.mktemp("ddp")
    preprocess.run("digits", root / "dataset", limit=600, seed=3)
    out = {"dataset": root / "dataset", "root": root}
    for workers in (1, 2):
        start = time.perf_counter()
        out[workers] = torch_train.run(root / "dataset", root / f"w{workers}", workers=workers, **TRAIN)
        out[f"seconds_{workers}"] = time.perf_counter() - start
    return out


def assert_same_quality(name: str, one: dict, two: dict, seconds: tuple[float, float] | None = None) -> None:
    """The issue's bounds, with the measured differences printed (pytest -s)."""
    d_acc = abs(two["final_val_accuracy"] - one["final_val_accuracy"])
    d_loss = abs(two["history"]["loss"][-1] - one["history"]["loss"][-1]) / one["history"]["loss"][-1]
    timing = f" ({seconds[0]:.1f} s vs {seconds[1]:.1f} s)" if seconds else ""
    print(f"\n{name}: 1 vs 2 workers{timing}: val acc {one['final_val_accuracy']:.4f} vs "
          f"{two['final_val_accuracy']:.4f} ({100 * d_acc:.2f} pp), final train loss "
          f"{one['history']['loss'][-1]:.6f} vs {two['history']['loss'][-1]:.6f} ({100 * d_loss:.3f} %)")
    assert d_acc <= 0.01, f"{name}: validation accuracy differs by {100 * d_acc:.2f} pp (> 1 pp)"
    assert d_loss <= 0.10, f"{name}: final training loss differs by {100 * d_loss:.2f} % (> 10 %)"


def test_two_workers_match_one_process_quality(runs):
    one, two = runs[1], runs[2]
    assert two["workers"] == 2 and two["epochs"] == TRAIN["epochs"]
    assert len(two["history"]["loss"]) == TRAIN["epochs"]
    assert two["history"]["loss"][-1] < two["history"]["loss"][0], "DDP training did not lower the loss"
    assert_same_quality("torch DDP", one, two, (runs["seconds_1"], runs["seconds_2"]))
    assert two["test_accuracy"] > 0.8


def test_ranks_together_take_exactly_one_process_global_batches():
    """Every rank draws the same permutation; their parts of a batch are disjoint and make the whole batch,
    also for a last batch that does not split evenly (here 3 samples over 2 ranks)."""
    import torch

    one = list(torch_ddp.global_batches(35, 8, seed=4, epochs=2))
    generator = torch.Generator().manual_seed(4)
    for epoch in one:  # what kfopt.frameworks.torch.fine_tune draws in one process
        order = torch.randperm(35, generator=generator)
        assert [b.tolist() for b in epoch] == [order[i:i + 8].tolist() for i in range(0, 35, 8)]
    assert one[0][0].tolist() != one[1][0].tolist(), "a new order every epoch"
    for batch in one[0] + one[1]:
        parts = [torch_ddp.shard(batch, rank, 2) for rank in range(2)]
        assert torch.cat(parts).tolist() == batch.tolist()
        assert abs(len(parts[0]) - len(parts[1])) <= 1


def test_rank_zero_writes_one_valid_baseline(runs):
    from kfopt import formats
    from kfopt.data import dataset as ds_mod

    out = runs["root"] / "w2"
    meta = variant.read(out)
    assert meta.name == "baseline" and meta.framework == "torch" and meta.params["workers"] == 2
    assert meta.extra["distributed"] == "DistributedDataParallel"
    assert not [p for p in runs["root"].iterdir() if p.name.startswith(".")], "a staging folder was left behind"
    x, y = ds_mod.read(runs["dataset"]).split("test")
    acc = float(np.mean(formats.load(out).predict(x).argmax(-1) == y))
    assert acc == pytest.approx(meta.extra["test_accuracy"], abs=1e-6)


def test_a_failing_worker_fails_the_stage_with_its_log_tail(runs, tmp_path):
    import shutil

    bad = tmp_path / "dataset"
    shutil.copytree(runs["dataset"], bad)
    (bad / "train.npz").write_bytes(b"not the training split")
    with pytest.raises(ModelError, match=r"2 workers failed.*worker rank [01]: .*kfopt: error:.*train\.npz"):
        torch_train.run(bad, tmp_path / "out", workers=2, **TRAIN)
    assert not (tmp_path / "out").exists()


def test_rendezvous_reads_torchrun_then_trainer_environment():
    assert torch_ddp.rendezvous({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                                 "MASTER_PORT": "1234"}) == {"rank": 1, "world_size": 4, "local_rank": 1,
                                                             "master_addr": "h", "master_port": 1234}
    trainer = {"PET_NNODES": "3", "PET_NODE_RANK": "2", "PET_MASTER_ADDR": "job-node-0-0.job", "PET_MASTER_PORT": "29400"}
    assert torch_ddp.rendezvous(trainer) == {"rank": 2, "world_size": 3, "local_rank": 0,
                                             "master_addr": "job-node-0-0.job", "master_port": 29400}
    assert torch_ddp.rendezvous({})["world_size"] == 1


@pytest.mark.parametrize("workers,batch,msg", [(0, 32, "at least 1"), (3, 32, "multiple of train.workers"),
                                               (64, 32, "more than train.batch_size")])
def test_bad_worker_counts_are_refused(workers, batch, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg):
        workers_mod.check_workers(workers, batch)
    cfg = config.RunConfig()
    cfg.train.workers, cfg.train.batch_size = workers, batch
    with pytest.raises(ConfigError, match=msg):
        config.validate(cfg)


@pytest.fixture(scope="module")
def keras_runs(runs):
    """The same split, seed and global batch trained by Keras in 1 process and by 2 MWMS workers (~40 s)."""
    from kfopt.models import train

    root = runs["root"]
    keras_train = {**TRAIN, "patience": 10}  # watches validation (Keras records val curves only then), never stops
    out = {}
    for w in (1, 2):
        start = time.perf_counter()
        out[w] = train.run(runs["dataset"], root / f"k{w}", workers=w, **keras_train)
        out[f"seconds_{w}"] = time.perf_counter() - start
    return out


def test_two_keras_workers_match_one_process_quality(runs, keras_runs):
    one, two = keras_runs[1], keras_runs[2]
    assert two["workers"] == 2 and two["epochs"] == TRAIN["epochs"]
    assert two["history"]["loss"][-1] < two["history"]["loss"][0], "MWMS training did not lower the loss"
    assert_same_quality("Keras MWMS", one, two, (keras_runs["seconds_1"], keras_runs["seconds_2"]))
    assert two["test_accuracy"] > 0.8
    meta = variant.read(runs["root"] / "k2")
    assert meta.framework == "keras" and meta.params["workers"] == 2
    assert meta.extra["distributed"] == "MultiWorkerMirroredStrategy"


def test_keras_on_trainjob_is_accepted_for_both_frameworks():
    """Kubeflow Trainer runs Keras too (kfopt's kfopt-tensorflow-distributed runtime): no refusal."""
    cfg = config.RunConfig()
    cfg.train.workers, cfg.train.engine = 2, "trainjob"
    for framework in ("keras", "torch"):
        cfg.model.framework = framework
        config.validate(cfg)


def test_a_failing_keras_worker_fails_the_stage_with_its_log_tail(runs, tmp_path):
    import shutil

    from kfopt.models import train

    bad = tmp_path / "dataset"
    shutil.copytree(runs["dataset"], bad)
    (bad / "val.npz").write_bytes(b"not the validation split")
    with pytest.raises(ModelError, match=r"Keras training with 2 workers.*failed.*worker [01]: .*kfopt: error:.*val\.npz"):
        train.run(bad, tmp_path / "out", workers=2, **TRAIN)
    assert not (tmp_path / "out").exists()
