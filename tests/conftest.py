import os
import pickle
import struct

# Many tests compare runs bitwise, which holds on CPU, not under cuDNN; and `--device auto` would pick a GPU
# where one exists, in this process and in the CLI subprocesses. So the suite hides GPUs from itself before
# torch first looks for one. tests/test_cuda.py holds the GPU checks: run them with
# DCGAN_FEATURES_TEST_CUDA=1 on a machine with a GPU (they are skipped anywhere else).
if os.environ.get("DCGAN_FEATURES_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dcgan_features.config import load_config

torch.set_num_threads(2)


@pytest.fixture
def interrupted_pretrain(monkeypatch):
    """``run(config, run_dir, at)``: pretrain and stop it with a KeyboardInterrupt as its ``at``-th step begins, as a
    kill would; the run folder keeps what was checkpointed before, and a later ``pretrain`` resumes from it."""
    import dcgan_features.train as train_module

    def run(config, run_dir, at):
        real_step, calls = train_module.train_step, {"n": 0}

        def dies(*args):
            calls["n"] += 1
            if calls["n"] == at:
                raise KeyboardInterrupt
            return real_step(*args)

        monkeypatch.setattr(train_module, "train_step", dies)
        try:
            with pytest.raises(KeyboardInterrupt):
                train_module.pretrain(config, run_dir, echo=lambda s: None)
        finally:
            monkeypatch.setattr(train_module, "train_step", real_step)

    return run


@pytest.fixture
def tiny_config():
    """A DCGAN small enough to train for a few steps in well under a second per step on CPU."""
    return load_config(None, {"data.dataset": "fake", "model.width": 8, "train.epochs": 2,
                              "train.batch_size": 64, "train.log_every": 2, "svm.c_grid": [1e-3, 1e-1]})


class Py2StrPickler(pickle._Pickler):
    """Writes every str as a Python-2 byte string (SHORT_BINSTRING), as the official CIFAR-10 pickles do."""

    def save_str(self, obj):
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch[str] = save_str


def write_py2_pickle(path, obj):
    with open(path, "wb") as f:
        Py2StrPickler(f, protocol=2).dump(obj)


@pytest.fixture
def tiny_cifar(tmp_path):
    """A CIFAR-10 'python version' tree with 20 images per batch, in the official pickle format."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in np.arange(20) % 10]
        data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
        write_py2_pickle(base / name, {"batch_label": f"{name} of 6", "labels": labels, "data": data,
                                       "filenames": [f"img_{i}.png" for i in range(20)]})
    write_py2_pickle(base / "batches.meta", {"label_names": [str(i) for i in range(10)], "num_vis": 3072})
    return tmp_path
