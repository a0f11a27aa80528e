"""Each rule's code hash follows the imports of the stage it runs; the rules and the stages agree."""

import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import giblet
from giblet import rules, stages
from giblet.code_hash import PACKAGE_ROOT, stage_code_hash, stage_files
from giblet.config import load_config

from tests.conftest import REPO


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("package") / "giblet"
    shutil.copytree(PACKAGE_ROOT, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def changed_stages(root: Path, module: str) -> set[str]:
    """The stages whose hash changes when ``module`` (a path under giblet/) is edited in ``root``."""
    before = {name: stage_code_hash(name, root) for name in stages.STAGES}
    path = root / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# an edit\n")
        return {name for name in stages.STAGES if stage_code_hash(name, root) != before[name]}
    finally:
        path.write_text(original)


# Module edited -> stages that must rerun (what their imports reach) / stages that must not. The left
# column includes every module the issue found missing from the old hand-written lists.
CASES = {
    "fmri/nifti.py": ({"fmri_mask", "evaluate"}, {"extract_frames", "normalize_fmri", "train", "plan_split"}),
    "fmri/inputs.py": ({"fmri_mask", "normalize_fmri"}, {"average_fmri", "extract_frames", "evaluate"}),
    # fmri_mask probes the movie to place the runs on its clock.
    "stimulus/media.py": ({"plan_split", "extract_frames", "encode_audio", "embed_text", "fmri_mask"},
                          {"examine_weights", "training_summary"}),
    "timing.py": ({"plan_split", "extract_frames", "fmri_mask"}, {"training_summary"}),
    "splits.py": ({"assemble_dataset", "train", "plan_split", "normalize_fmri", "average_fmri"},
                  {"extract_frames", "fmri_mask", "training_summary"}),
    "evaluate/figures.py": ({"training_summary"}, {"train", "fmri_mask", "extract_frames"}),
    "evaluate/evaluate.py": ({"evaluate"}, {"train", "extract_frames", "training_summary"}),
    # Training code reruns training, and nothing that only reads model.pt.
    "train/loop.py": ({"train"}, {"verify_checkpoint", "evaluate", "examine_weights", "plot_reconstructions",
                                  "lesion", "baseline_ridge", "assemble_dataset"}),
    # The agent every multi-GPU training starts (imported only inside functions by the launchers).
    "train/torchrun.py": ({"train", "pretrain_frames", "pretrain_audio"}, {"evaluate"}),
    # The brain model never reruns the stimulus pretraining; the autoencoders rerun it and training.
    "model/autoencoder.py": ({"train", "evaluate"}, {"pretrain_frames", "pretrain_audio", "extract_frames"}),
    "autoencoders/frames.py": ({"pretrain_frames", "pretrain_audio", "train"}, {"extract_frames", "baseline_ridge"}),
    "train/engine.py": ({"train", "pretrain_frames"}, {"evaluate", "baseline_ridge"}),
    "model/encoders.py": ({"train", "evaluate", "verify_checkpoint", "lesion", "plot_reconstructions"},
                          {"baseline_ridge", "assemble_dataset", "fmri_mask"}),
}


@pytest.mark.parametrize("module", sorted(CASES))
def test_editing_a_module_changes_exactly_the_stages_that_import_it(package_copy, module):
    must, must_not = CASES[module]
    changed = changed_stages(package_copy, module)
    assert must <= changed, f"{module}: {sorted(must - changed)} did not notice"
    assert not must_not & changed, f"{module}: {sorted(must_not & changed)} should not rerun"
    # Exactly the stages whose reachable files include it.
    assert changed == {name for name in stages.STAGES if package_copy / module in stage_files(name, package_copy)}


def test_editing_a_stage_function_changes_only_its_hash(package_copy):
    path = package_copy / "stages.py"
    original = path.read_text()
    before = {name: stage_code_hash(name, package_copy) for name in stages.STAGES}
    try:
        path.write_text(original.replace('"""Loss curves per component', '"""Loss curves, per component'))
        after = {name: stage_code_hash(name, package_copy) for name in stages.STAGES}
    finally:
        path.write_text(original)
    assert {name for name in before if before[name] != after[name]} == {"training_summary"}


def test_the_static_imports_cover_what_each_stage_imports_when_it_runs():
    """An independent check of the ast walk: start each stage in a fresh interpreter (its arguments
    None, so it stops right after its imports) and compare the giblet modules Python really loaded."""
    script = """
import inspect, json, sys
from giblet import stages
name = sys.argv[1]
before = set(sys.modules)
func = stages.STAGES[name]
try:
    func(**{p: None for p, spec in inspect.signature(func).parameters.items() if spec.default is spec.empty})
except Exception:
    pass
print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith("giblet"))))
"""
    for name in ("fmri_mask", "plan_split", "training_summary", "verify_checkpoint", "extract_frames"):
        result = subprocess.run([sys.executable, "-c", script, name], capture_output=True, text=True, cwd=REPO,
                                timeout=120)
        loaded = json.loads(result.stdout.strip().splitlines()[-1])
        files = {str(p.relative_to(PACKAGE_ROOT)) for p in stage_files(name)}
        for module in loaded:
            parts = module.split(".")[1:]
            candidates = {"/".join(parts) + ".py", "/".join(parts + ["__init__.py"])}
            assert candidates & files, f"{name} loaded {module}, which its code hash misses"


@pytest.mark.parametrize("overrides", [[], ["fmri.mask=masks/brain.nii.gz", "stimulus.audio.enabled=false",
                                            "fmri.normalize_on=all", "evaluate.lesion_regions={v1: v1.nii.gz}"]])
def test_each_stage_takes_exactly_its_rule_files_and_params(overrides):
    """The Snakefile and the giblet command both build a stage's keywords from giblet.rules: they must
    be the stage function's keywords, no more and no fewer."""
    config = load_config(None, overrides)
    extras = {"threads", "gpus", "train_config", "progress"}
    for name, func in stages.STAGES.items():
        keywords = set(inspect.signature(func).parameters) - extras
        subject = "01" if name == "normalize_fmri" else None
        inputs = rules.inputs(name, config, subject)
        given = [*inputs, *rules.outputs(name, config), *rules.params(name, config)]
        assert len(given) == len(set(given)), f"{name}: a file and a param share a name"
        assert set(given) == keywords, name


def test_every_rule_runs_its_stage_through_the_one_script():
    smk = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    declared = {line.split()[1].rstrip(":") for line in smk.splitlines()
                if line.startswith(("rule ", "checkpoint "))}
    assert declared == set(stages.STAGES)
    assert smk.count("    script:\n        STAGE_SCRIPT\n") == len(stages.STAGES)
    assert [p.name for p in (REPO / "workflow" / "scripts").iterdir()] == ["stage.py"]
    assert "source_hash" not in smk and Path(giblet.__file__).parent == PACKAGE_ROOT


def test_the_rules_know_the_mask_methods_the_mask_stage_knows():
    """fmri.mask is a file input unless it names a method: the two lists must agree."""
    from giblet.fmri.mask import METHODS

    assert rules.FMRI_MASK_METHODS == METHODS


# ---- the cache: the walk runs once per version of the package, and a cached hash is never stale --

def test_the_cache_is_used_and_never_stale(package_copy, tmp_path, monkeypatch):
    import os

    from giblet import code_hash

    monkeypatch.setenv("GIBLET_CACHE_DIR", str(tmp_path / "cache"))
    root = Path(shutil.copytree(package_copy, tmp_path / "giblet"))
    first = stage_code_hash("fmri_mask", root)
    assert first == code_hash._compute_stage_hash("fmri_mask", root.resolve())
    assert len(list((tmp_path / "cache").glob("code-hash-*.json"))) == 1

    # A hit does not walk the imports.
    def no_walk(*args):
        raise AssertionError("the cache was not used")
    with monkeypatch.context() as patch:
        patch.setattr(code_hash, "_compute_stage_hash", no_walk)
        assert stage_code_hash("fmri_mask", root) == first

    # An edit of the same size, with the old modification time put back: still a new hash.
    module = root / "fmri" / "mask.py"
    stat = module.stat()
    source = module.read_text()
    edited = source.replace("keeps no voxel", "keeps no v0xel", 1)
    assert edited != source and len(edited) == len(source)
    module.write_text(edited)
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = stage_code_hash("fmri_mask", root)
    assert changed != first and changed == code_hash._compute_stage_hash("fmri_mask", root.resolve())
    assert stage_code_hash("extract_frames", root) == code_hash._compute_stage_hash("extract_frames", root.resolve())

    # An added module (even empty) is another key too: an import may now find it.
    before = code_hash._cache_key(root.resolve())
    (root / "fmri" / "extra.py").write_text("")
    assert code_hash._cache_key(root.resolve()) != before


def test_a_broken_or_unwritable_cache_only_costs_time(package_copy, tmp_path, monkeypatch):
    from giblet import code_hash

    expected = code_hash._compute_stage_hash("plan_split", package_copy.resolve())
    monkeypatch.setenv("GIBLET_CACHE_DIR", str(tmp_path / "cache"))
    from giblet import cache

    path = cache.entry_path("code-hash", code_hash._cache_key(package_copy.resolve()))
    path.parent.mkdir()
    path.write_text("{not json")
    assert stage_code_hash("plan_split", package_copy) == expected
    path.write_text("[]")  # JSON, but not a mapping
    assert stage_code_hash("plan_split", package_copy) == expected
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("GIBLET_CACHE_DIR", str(blocker / "sub"))  # under a file: cannot be created
    assert stage_code_hash("plan_split", package_copy) == expected
