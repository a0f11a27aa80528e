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
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "manifest.json").write_text("{}")  # there, so the GPU check is what fails
    result = run_giblet("train", "--set", "train.gpus=2", "--set", f"results_dir={tmp_path}",
                        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and "train.gpus is 2 but this job sees 0 GPU(s)" in result.stderr
    missing = tmp_path / "nothing" / "model.pt"
    result = run_giblet("evaluate", "--model", str(missing), "--set", f"results_dir={tmp_path}")
    assert result.returncode == 2 and str(missing) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "evaluate" / "verify.json").exists()


def test_train_then_evaluate_real_data_without_lesion_masks(tmp_path):
    """A bundle without the demo's truth.npz is real data: `giblet evaluate` must run every evaluation
    stage, the lesion one with the intact decoding only, exactly as the Snakemake rules do."""
    import json

    import numpy as np

    from tests.bundles import write_bundle

    root = tmp_path / "bundle"
    root.mkdir()
    ceiling = np.linspace(0.1, 0.9, 24).astype(np.float32)
    np.savez(root / "ceiling.npz", group=ceiling, isc=ceiling**2)
    manifest = write_bundle(root, 24, ceiling=root / "ceiling.npz")
    overrides = [f"results_dir={tmp_path / 'results'}", "train.preset=tiny", "train.epochs=1", "train.batch_size=4",
                 "train.device=cpu", "evaluate.device=cpu", "evaluate.null_shifts=5", "evaluate.examples=2"]
    sets = [arg for item in overrides for arg in ("--set", item)]
    trained = run_giblet("train", "--manifest", str(manifest), *sets)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = run_giblet("evaluate", "--manifest", str(manifest), *sets)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    out = tmp_path / "results" / "evaluate"
    lesion = json.loads((out / "lesion.json").read_text())
    assert lesion["regions"] == {} and (out / "lesion.png").stat().st_size > 0
    assert json.loads((out / "verify.json").read_text())["ok"] is True
    metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    assert metrics["ceiling"]["source"] == "ISC estimate" and metrics["n_test"] > 0
    assert {p.name for p in out.iterdir()} >= {"ridge.json", "weights.json", "training.png", "reconstructions"}


def test_every_stage_is_a_command_with_the_rule_arguments(tmp_path):
    """`giblet stage RULE` offers every rule's stage; its errors name the file, exit 2, no traceback."""
    listed = run_giblet("stage", "--help")
    from giblet.stages import STAGES

    assert all(name in listed.stdout for name in STAGES)
    missing = run_giblet("stage", "plan_split", "--set", f"results_dir={tmp_path}")
    assert missing.returncode == 2 and "fmri.json" in missing.stderr and "Traceback" not in missing.stderr
