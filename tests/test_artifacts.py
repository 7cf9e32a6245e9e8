import subprocess

from dcgan_features.artifacts import git_commit


def test_git_commit_is_dirty_for_code_changes_not_for_results(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "table.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    head = git_commit(tmp_path)
    assert len(head) == 40 and not head.endswith("+dirty")
    (tmp_path / "results" / "table.md").write_text("new\n")  # a benchmark rewrote its committed table
    assert git_commit(tmp_path / "results") == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "results") == head + "+dirty"
