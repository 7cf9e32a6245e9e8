"""GPU checks, skipped without CUDA. The rest of the suite hides GPUs (see conftest.py); run these with
``DCGAN_FEATURES_TEST_CUDA=1 python -m pytest tests/test_cuda.py`` on a machine with a GPU."""

import numpy as np
import pytest
import torch

from dcgan_features.config import SvmConfig, apply_overrides
from dcgan_features.svm import TorchL2SVM, l2svm_objective
from dcgan_features.svm_rows import standardise
from dcgan_features.train import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and DCGAN_FEATURES_TEST_CUDA=1")


@pytest.mark.parametrize("bf16", [False, True])
def test_pretraining_runs_on_cuda_with_finite_losses(tiny_config, tmp_path, bf16):
    config = apply_overrides(tiny_config, {"train.device": "cuda", "train.bf16": bf16, "train.epochs": 1})
    pretrain(config, tmp_path / "run", echo=lambda s: None)
    assert (tmp_path / "run" / "discriminator.pt").is_file()


def test_the_svm_finds_the_same_optimum_on_cuda_as_on_cpu():
    rng = np.random.default_rng(0)
    y = np.arange(600) % 5
    X = standardise((rng.normal(size=(5, 40))[y] + 2 * rng.normal(size=(600, 40))).astype(np.float32))[0]
    cfg = SvmConfig()
    objectives = []
    for device in ("cpu", "cuda"):
        model = TorchL2SVM(C=0.1, tol=1e-5, max_iter=cfg.max_iter, device=device).fit(X, y)
        assert model.converged_
        objectives.append(sum(l2svm_objective(X, y, model.coef_[k:k + 1], model.intercept_[k:k + 1], 0.1,
                                              model.classes_[k:k + 1]) for k in range(5)))
    assert abs(objectives[1] / objectives[0] - 1) < 1e-6
