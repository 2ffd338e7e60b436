"""Data-parallel training on this machine: 2 real worker processes for torch (torch.distributed.run, DDP, gloo)
and for Keras (MultiWorkerMirroredStrategy, TF_CONFIG on localhost ports).

Nothing here is mocked: the workers are real processes, they rendezvous on 127.0.0.1 and average
gradients, and rank 0 (the chief) writes a real baseline variant. Quality is compared with one process
at the same global batch and seed.
"""

import time

import numpy as np
import pytest

from kfopt import config, variant
from kfopt.errors import ConfigError, ModelError
from kfopt.models import torch_ddp, torch_train

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


def test_two_workers_match_one_process_quality(runs):
    one, two = runs[1], runs[2]
    assert two["workers"] == 2 and two["epochs"] == TRAIN["epochs"]
    assert len(two["history"]["loss"]) == TRAIN["epochs"]
    assert two["history"]["loss"][-1] < two["history"]["loss"][0], "DDP training did not lower the loss"
    assert abs(two["final_val_accuracy"] - one["final_val_accuracy"]) <= 0.05
    assert abs(two["history"]["loss"][-1] - one["history"]["loss"][-1]) <= 0.10 * one["history"]["loss"][-1]
    assert two["test_accuracy"] > 0.8
    print(f"\n1 worker: {runs['seconds_1']:.1f} s, val acc {one['final_val_accuracy']:.3f}, loss "
          f"{one['history']['loss'][-1]:.4f}; 2 workers: {runs['seconds_2']:.1f} s, val acc "
          f"{two['final_val_accuracy']:.3f}, loss {two['history']['loss'][-1]:.4f}")


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


@pytest.mark.parametrize("workers,batch,msg", [(0, 32, "at least 1"), (3, 32, "multiple of train.workers")])
def test_bad_worker_counts_are_refused(workers, batch, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg):
        torch_ddp.check_workers(workers, batch)
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
    return {w: train.run(runs["dataset"], root / f"k{w}", workers=w, **keras_train) for w in (1, 2)}


def test_two_keras_workers_match_one_process_quality(runs, keras_runs):
    one, two = keras_runs[1], keras_runs[2]
    assert two["workers"] == 2 and two["epochs"] == TRAIN["epochs"]
    assert two["history"]["loss"][-1] < two["history"]["loss"][0], "MWMS training did not lower the loss"
    assert abs(two["final_val_accuracy"] - one["final_val_accuracy"]) <= 0.05
    assert abs(two["history"]["loss"][-1] - one["history"]["loss"][-1]) <= 0.10 * one["history"]["loss"][-1]
    assert two["test_accuracy"] > 0.8
    meta = variant.read(runs["root"] / "k2")
    assert meta.framework == "keras" and meta.params["workers"] == 2
    assert meta.extra["distributed"] == "MultiWorkerMirroredStrategy"
    print(f"\nKeras 1 worker: val acc {one['final_val_accuracy']:.3f}, loss {one['history']['loss'][-1]:.4f}; "
          f"2 workers: val acc {two['final_val_accuracy']:.3f}, loss {two['history']['loss'][-1]:.4f}")


def test_keras_on_trainjob_is_refused(runs, tmp_path):
    from kfopt.models import train

    with pytest.raises(ConfigError, match="no TensorFlow runtime"):
        train.run(runs["dataset"], tmp_path / "k", workers=2, engine="trainjob", epochs=1)
    assert not (tmp_path / "k").exists()
    cfg = config.RunConfig()
    cfg.train.workers, cfg.train.engine = 2, "trainjob"
    with pytest.raises(ConfigError, match="no TensorFlow runtime"):
        config.validate(cfg)
    cfg.model.framework = "torch"
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
