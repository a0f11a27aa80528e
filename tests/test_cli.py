"""The `giblet` console command."""

import subprocess
import sys

import yaml


def run_giblet(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "giblet.cli", *args], capture_output=True, text=True,
                          **kwargs)


def test_help_lists_the_stages():
    result = run_giblet("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "config" in result.stdout


def test_config_prints_the_filled_in_config():
    result = run_giblet("config", "--set", "demo.n_trs=123")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["demo"]["n_trs"] == 123 and config["demo"]["difficulty"]["ar1_phi"] == 0.4


def test_bad_key_exits_2_naming_the_key(tmp_path):
    result = run_giblet("demo", "--set", "demo.n_subjcts=2", "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "demo.n_subjcts" in result.stderr and "demo.n_subjects" in result.stderr
    assert not (tmp_path / "out").exists()


def test_demo_command_writes_the_demo(tmp_path):
    from tests.conftest import SMALL_DEMO

    overrides = [a for item in SMALL_DEMO + ["demo.n_subjects=2"] for a in ("--set", item)]
    result = run_giblet("demo", *overrides, "--quiet", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    names = sorted(p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*")
                   if p.is_file())
    assert names == ["annotations.tsv", "demo.json", "fmri/sub-01_bold.nii.gz", "fmri/sub-02_bold.nii.gz",
                     "movie.mp4", "truth.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temporary directory left behind


def test_inverse_commands_on_generated_stimulus(tmp_path):
    """text-nearest reads what embed_text writes, names rows by TR and slot, and says when a slot is empty."""
    import numpy as np

    texts = np.array(["a cat", "a dog", "a car"])
    library = np.eye(3, 4, dtype=np.float32)
    np.savez(tmp_path / "text_annotations.npz", texts=texts, embeddings=library)
    text = np.zeros((2, 2, 4), np.float32)
    text[0, 0], text[1, 0], text[1, 1] = library[2], library[0], 0.9 * library[1] + 0.1 * library[0]
    np.save(tmp_path / "text.npy", text)
    result = run_giblet("text-nearest", str(tmp_path / "text.npy"), "--library",
                        str(tmp_path / "text_annotations.npz"), "--top-k", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["TR 0 slot 0\t1.000 a car", "TR 0 slot 1\t(empty slot)",
                                          "TR 1 slot 0\t1.000 a cat", "TR 1 slot 1\t0.994 a dog"]


def test_train_and_evaluate_commands_fail_clearly(tmp_path):
    """Asking for GPUs that are not there, or evaluating a model that is not there: exit 2, one line."""
    result = run_giblet("train", "--set", "train.gpus=2", "--set", f"results_dir={tmp_path}",
                        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and "train.gpus is 2 but this job sees 0 GPU(s)" in result.stderr
    missing = tmp_path / "nothing" / "model.pt"
    result = run_giblet("evaluate", "--model", str(missing), "--set", f"results_dir={tmp_path}")
    assert result.returncode == 2 and str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "evaluate" / "verify.json").exists()
