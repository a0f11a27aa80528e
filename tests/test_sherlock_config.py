"""config/sherlock.yaml: its real-data choices, and the whole pipeline through it on a small data set
shaped like the public Sherlock release (tests/sherlock_like.py).

The end-to-end run overrides only what size and being offline require: the input paths, the
subject list, the results directory, the frame size, the split ranges, the model size and epochs,
and local stand-ins for the pretrained EnCodec and CLIP weights (``dataset: files`` refuses the
demo's random weights). Everything else (``dataset: files``, ``columns: sherlock``,
``shift_trs: 3``, ``short_subjects: drop``, ``frame_skip``, the 29.97 fps movie) is sherlock.yaml's.
"""

import json
import math
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import yaml

from giblet.config import load_config
from giblet.splits import Split, plan_split
from tests.conftest import REPO
from tests.sherlock_like import COLUMNS, make_sherlock_like, write_offline_weights
from tests.test_workflow import snakemake

N_TRS = 72
N_MISSING = 6
# Target t uses stimulus TRs [t + 3 - 9, t + 3] (lag 10, shift 3): usable targets [6, N_TRS - 3) = [6, 69).
SMALL_RANGES = {"train": [6, 37], "val": [47, 51], "test": [61, 69]}


@pytest.fixture(scope="module")
def sherlock_data(tmp_path_factory) -> dict:
    return make_sherlock_like(tmp_path_factory.mktemp("sherlock_like"), n_subjects=3, n_trs=N_TRS,
                              short_subject="5", n_missing=N_MISSING)


def test_sherlock_yaml_holds_the_real_data_choices():
    config = load_config(REPO / "config" / "sherlock.yaml")
    assert config["dataset"] == "files" and config["tr"] == 1.5
    assert config["inputs"]["bold"].endswith("/sherlock_movie_s{subject}.nii")
    assert config["inputs"]["subjects"] == [str(k) for k in range(1, 18)]
    assert config["fmri"]["shift_trs"] == 3 and config["fmri"]["short_subjects"] == "drop"
    assert config["stimulus"]["text"]["columns"] == "sherlock"
    assert config["stimulus"]["audio"]["weights"] == "pretrained"
    assert config["stimulus"]["text"]["pretrained"] == "openai"
    # The split fits 1,976 TRs, and no window crosses the scan boundary (scan 2 starts at TR 946).
    split = plan_split(1976, 1976, config["split"], config["fmri"]["shift_trs"])
    for name, (start, stop) in split.ranges.items():
        first, last = split.window(start)[0], split.window(stop - 1)[1] - 1
        assert first >= 0 and last <= 1975 and (last < 946 or first >= 946), (name, first, last)


def _own_data_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("## Run on your own movie and fMRI", 1)[1].split("\n## ", 1)[0]


def _schema_has(key: str) -> bool:
    from giblet.config import load_schema

    node = load_schema()
    for part in key.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return False
    return True


def test_the_readme_on_own_data_names_real_keys_and_a_valid_overlay():
    section = _own_data_section()
    keys = set(re.findall(r"`((?:inputs|fmri|split|stimulus|train|evaluate)\.[a-z0-9_.]+)", section))
    assert {"inputs.bold", "fmri.shift_trs", "fmri.short_subjects", "split.ranges", "stimulus.audio.weights",
            "stimulus.text.pretrained", "stimulus.text.columns"} <= keys
    assert [key for key in keys if not _schema_has(key)] == []
    overlay = re.search(r"```yaml\n(.+?)\n```", section, re.S).group(1)
    config = load_config(None, [f"{k}={json.dumps(v)}" for k, v in yaml.safe_load(overlay).items()])
    assert config["dataset"] == "files" and config["inputs"]["subjects"] == ["01", "02", "03"]
    assert "snakemake --cores all --resources gpus=8 --configfile config/sherlock.yaml" in section


def test_the_fixture_is_sherlock_shaped(sherlock_data):
    from giblet.fmri.inputs import check_bold_inputs
    from giblet.stimulus.annotations import read_annotations
    from giblet.stimulus.media import probe_movie

    assert sherlock_data["subjects"] == ["1", "2", "5"]
    image = nib.load(sherlock_data["bold"]["1"])
    assert image.shape == (61, 73, 61, N_TRS) and image.get_data_dtype() == np.float32
    assert np.allclose(image.affine, sherlock_data["affine"]) and image.header.get_zooms() == (3, 3, 3, 1.5)
    assert sherlock_data["bold"]["1"].name == "sherlock_movie_s1.nii"  # uncompressed, as released
    movie = probe_movie(sherlock_data["movie"])
    assert movie.fps == pytest.approx(30000 / 1001) and movie.audio_channels == 2
    assert math.floor(movie.duration_s / 1.5) == N_TRS == math.floor(movie.audio_duration_s / 1.5)
    import openpyxl

    header = [cell.value for cell in next(openpyxl.load_workbook(sherlock_data["annotations"]).active.rows)]
    assert header == COLUMNS and "Start Time (s) " in header  # trailing spaces kept
    table = read_annotations(sherlock_data["annotations"], "sherlock")
    assert table["text"].tolist() == sherlock_data["texts"]
    # Subject 5's last volumes repeat its last acquired one, as in the release: `drop` drops it.
    info = check_bold_inputs(sherlock_data["bold"], 1.5, "drop")
    assert info["subjects"] == ["1", "2"] and info["dropped"] == ["5"] and info["n_trs"] == N_TRS
    assert info["per_subject"]["5"]["usable_trs"] == N_TRS - N_MISSING


def write_overlay(workdir, data: dict, weights: dict) -> str:
    """What size and being offline require, over config/sherlock.yaml."""
    overlay = {
        "results_dir": "results/sherlock_like",
        "inputs": {"movie": str(data["movie"]), "annotations": str(data["annotations"]),
                   "bold": data["bold_pattern"], "subjects": data["subjects"]},
        "split": {"ranges": SMALL_RANGES},
        "stimulus": {"frames": {"width": 32, "height": 18},
                     "audio": {"weights": str(weights["encodec"])},
                     "text": {"pretrained": str(weights["clip"])}},
        "train": {"preset": "tiny", "gpus": 0, "epochs": 2, "lr": 0.01},
        "pretrain": {"frames": {"epochs": 2}, "audio": {"epochs": 5}},
        "evaluate": {"null_shifts": 20},
    }
    path = workdir / "config" / "sherlock_like.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return str(path.relative_to(workdir))


@pytest.mark.slow
def test_sherlock_yaml_runs_end_to_end_on_a_sherlock_shaped_data_set(sherlock_data, workflow_copy, tmp_path):
    weights = write_offline_weights(tmp_path / "weights", sherlock_data["movie"])
    overlay = write_overlay(workflow_copy, sherlock_data, weights)
    try:  # the default target; --configfile takes several files, so it comes last
        result = snakemake(workflow_copy, "--configfile", "config/sherlock.yaml", overlay)
    finally:
        shutil.rmtree(tmp_path / "weights")  # 400 MB that pytest would otherwise keep
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    results = workflow_copy / "results" / "sherlock_like"

    # fMRI: subject 5 (padded at the end) dropped and named; the others z-scored.
    info = json.loads((results / "fmri" / "fmri.json").read_text())
    assert info["subjects"] == ["1", "2"] and info["dropped"] == ["5"] and info["n_trs"] == N_TRS
    assert info["per_subject"]["5"]["trailing_constant_trs"] == N_MISSING
    # Every subject has its files (so the plan is known up front); the dropped one's are empty and say why.
    assert sorted(p.name for p in (results / "fmri").glob("sub-*_z.npy")) == ["sub-1_z.npy", "sub-2_z.npy",
                                                                              "sub-5_z.npy"]
    assert np.load(results / "fmri" / "sub-5_z.npy").shape[0] == 0
    assert "dropped" in json.loads((results / "fmri" / "sub-5_z.json").read_text())["dropped"]
    assert json.loads((results / "fmri" / "group.json").read_text())["sources"].keys() == {"sub-1_z", "sub-2_z"}
    mask = nib.load(results / "fmri" / "mask.nii.gz")
    n_voxels = int(np.count_nonzero(np.asarray(mask.dataobj)))
    assert mask.shape == (61, 73, 61) and np.allclose(mask.affine, sherlock_data["affine"])
    assert 0 < n_voxels <= sherlock_data["n_brain_voxels"]
    # The shared, stimulus-driven voxels are the ones whose subjects agree (inter-subject correlation).
    isc = np.load(results / "fmri" / "ceiling.npz")["isc"]
    driven = sherlock_data["signal_mask"][np.asarray(mask.dataobj) > 0]
    assert isc[driven].mean() > isc[~driven].mean() + 0.2

    # Stimulus: frame slots from the file's 29.97 fps, EnCodec's 112 code frames per 1.5 s TR.
    frames_per_tr = math.ceil(30000 / 1001 * 1.5 / 4)  # sherlock.yaml's frame_skip: 4
    assert frames_per_tr == 12
    assert np.load(results / "stimulus" / "frames.npy", mmap_mode="r").shape == (N_TRS, frames_per_tr, 18, 32, 3)
    codes = np.load(results / "stimulus" / "audio_codes.npy")
    assert codes.shape == (N_TRS, 4, 112) and len(np.unique(codes[:, 0])) > 1  # 3 kbps: 4 codebooks
    audio = json.loads((results / "stimulus" / "audio_codes.json").read_text())
    assert audio["models"]["encodec"]["weights_id"].startswith("encodec_24khz_stand_in.th sha256=")
    # Text: read from the xlsx through the sherlock preset (trailing-space headers).
    library = np.load(results / "stimulus" / "text_annotations.npz")
    assert library["texts"].tolist() == sherlock_data["texts"]
    assert np.load(results / "stimulus" / "text_mask.npy").any(axis=1).all()  # the segments cover the movie

    # The 3-TR shift: T = N_TRS - 3 usable fMRI TRs; the last target, N_TRS - 4, reads up to the
    # movie's last TR, N_TRS - 1.
    split = json.loads((results / "dataset" / "split.json").read_text())
    assert split["shift_trs"] == 3 and split["stimulus_trs"] == {"video": N_TRS, "audio": N_TRS}
    assert split["usable_targets"] == [10 - 1 - 3, N_TRS - 3]
    assert Split.from_dict(split).window(N_TRS - 4) == (N_TRS - 10, N_TRS)  # fMRI TR t <- stimulus TRs ..t+3
    manifest = json.loads((results / "dataset" / "manifest.json").read_text())
    assert manifest["n_voxels"] == n_voxels and manifest["shift_trs"] == 3
    assert manifest["n_targets"] == {name: stop - start for name, (start, stop) in SMALL_RANGES.items()}
    assert manifest["arrays"]["fmri"]["shape"] == [N_TRS, n_voxels]

    assert (results / "train" / "model.pt").exists()
    lesion = json.loads((results / "evaluate" / "lesion.json").read_text())
    assert lesion["regions"] == {} and lesion["region_source"] is None  # no lesion_regions: intact only
    assert json.loads((results / "evaluate" / "verify.json").read_text())["ok"] is True
    metrics = json.loads((results / "evaluate" / "metrics" / "metrics.json").read_text())
    assert metrics["n_test"] == SMALL_RANGES["test"][1] - SMALL_RANGES["test"][0]
