"""The kNN protocol (DINO's weighted kNN on cosine similarity): its votes, its k chosen on validation without
test data, and its rows through the CLI and the report."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dcgan_features import knn
from dcgan_features.cli import cli
from dcgan_features.config import SvmConfig
from dcgan_features.protocols import run_knn

from test_cli import fail, tiny_run  # noqa: F401


def brute_force_votes(bank, bank_labels, queries, k, temperature):
    """The definition, one query at a time: cosines, the k most similar, exp(cosine / T) summed per class."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    cosines = unit(queries) @ unit(bank).T
    predicted = []
    for row in cosines:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = {c: np.exp(row[nearest][bank_labels[nearest] == c] / temperature).sum() for c in set(bank_labels)}
        predicted.append(max(sorted(votes), key=votes.get))
    return np.array(predicted)


def test_votes_are_the_temperature_weighted_sum_over_the_k_most_similar():
    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 300) * 10 + 3  # labels need not be 0..n-1
    b, q = knn.normalised_rows(bank, queries, standardize=False)
    fast = knn.knn_votes(b, labels, q, (1, 5, 40), 0.1)
    for k in (1, 5, 40):
        np.testing.assert_array_equal(fast[k], brute_force_votes(bank, labels, queries, k, 0.1))
    # a low temperature lets the nearest neighbour outvote the rest; a very high one counts heads
    assert np.array_equal(knn.knn_votes(b, labels, q, (40,), 1e-3)[40], fast[1])


def data(seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(700) % 5
    x = (rng.normal(size=(5, 12))[y] + 2 * rng.normal(size=(700, 12))).astype(np.float32)
    return x, y


def test_k_is_chosen_on_the_linear_protocols_validation_split_without_test_data(monkeypatch):
    x, y = data()
    cfg = SvmConfig(val_fraction=0.2)
    ks = (1, 5, 25)
    outcome = run_knn(x[:600], y[:600], x[600:], y[600:], cfg, 3, ks, 0.07)
    garbage = run_knn(x[:600], y[:600], np.zeros_like(x[600:]), np.zeros_like(y[600:]), cfg, 3, ks, 0.07)
    assert outcome.validation == garbage.validation and outcome.details["chosen_k"] == garbage.details["chosen_k"]
    assert (outcome.n_fit, outcome.n_val) == (480, 120)
    calls = []
    real = knn.knn_accuracy

    def recorded(train_x, train_y, bank_rows, query_x, query_rows, query_y, *rest):
        calls.append((frozenset(bank_rows), query_x is train_x, frozenset(query_rows)))
        return real(train_x, train_y, bank_rows, query_x, query_rows, query_y, *rest)

    monkeypatch.setattr(knn, "knn_accuracy", recorded)
    run_knn(x[:600], y[:600], x[600:], y[600:], cfg, 3, ks, 0.07)
    (bank, from_train, queries), (test_bank, test_from_train, test_queries) = calls
    assert from_train and not bank & queries and len(bank | queries) == 600  # validation: fit rows vote for the rest
    assert not test_from_train and test_bank == frozenset(range(600)) and len(test_queries) == 100  # then test, once
    from dcgan_features.svm import validation_split

    fit_rows, val_rows = validation_split(y[:600], cfg.val_fraction, 3)  # the split the linear protocols use
    assert bank == frozenset(fit_rows) and queries == frozenset(val_rows)
    assert outcome.test_accuracy > 0.5 and outcome.chosen_C is None


def test_knn_through_the_cli_and_the_report(tmp_path, tiny_run):  # noqa: F811
    common = ["--checkpoint", str(tiny_run), "--results-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "c")]
    runner = CliRunner()
    out = runner.invoke(cli, ["evaluate", "--protocol", "knn", "--knn-k", "1", "--knn-k", "3", *common])
    assert out.exit_code == 0, out.output
    assert "test accuracy of weighted kNN at k=" in out.output and "<- chosen on validation" in out.output
    (path,) = (tmp_path / "res").glob("*knn*.json")
    result = json.loads(path.read_text())
    assert result["protocol"] == "knn-k1,3-T0.07" and result["chosen_k"] in (1, 3)
    assert [row["k"] for row in result["validation"]] == [1, 3]
    report = runner.invoke(cli, ["report", str(tmp_path / "res"), "--out", str(tmp_path / "rep")])
    assert report.exit_code == 0, report.output
    assert "knn-k1,3-T0.07" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--knn-k", "0"], "--knn-k needs at least one k of at least 1"),
    (["--knn-temperature", "0"], "--knn-temperature must be positive"),
])
def test_bad_knn_settings_get_one_line(tmp_path, tiny_run, args, message):  # noqa: F811
    assert message in fail("evaluate", "--checkpoint", tiny_run, "--protocol", "knn", *args,
                           "--results-dir", tmp_path / "res")


def test_knn_reads_no_mirrored_features_even_where_the_svm_would(tmp_path, tiny_run):  # noqa: F811
    from dcgan_features.evaluate import evaluate
    from dcgan_features.protocols import EvalConfig

    result = evaluate(tiny_run, EvalConfig(protocol="knn", knn_k=(1,)), results_dir=tmp_path / "res",
                      overrides={"svm.train_hflip": True, "svm.score_hflip": True}, echo=lambda s: None)
    assert not [key for key in result["timings"] if "mirrored" in key]


def test_a_k_at_the_edge_of_its_grid_is_flagged():
    x, y = data()
    outcome = run_knn(x[:600], y[:600], x[600:], y[600:], SvmConfig(val_fraction=0.2), 3, (150, 300), 0.07)
    values = {row["k"]: row["val_accuracy"] for row in outcome.validation}
    assert outcome.c_at_grid_edge == (values[outcome.details["chosen_k"]] > min(values.values()))
