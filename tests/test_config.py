"""The config schema: defaults, unknown keys, wrong types, overlays; and that the docs cover it."""

import re

import pytest
import yaml

from giblet.config import load_config, load_schema, validate_config
from giblet.errors import ConfigError
from tests.conftest import REPO


def _schema_keys(schema, prefix=""):
    """Every dotted key the schema declares."""
    keys = []
    for name, sub in schema.get("properties", {}).items():
        keys.append(prefix + name)
        keys += _schema_keys(sub, prefix + name + ".")
    return keys


def test_default_config_file_is_valid_and_equals_the_schema_defaults():
    with open(REPO / "config" / "config.yaml") as f:
        from_file = yaml.safe_load(f)
    assert validate_config(from_file) == load_config(None)


def test_default_config_file_spells_out_every_key():
    """config/config.yaml is the documented demo: no key is left implicit."""
    with open(REPO / "config" / "config.yaml") as f:
        from_file = yaml.safe_load(f)

    def has(data, dotted):
        for part in dotted.split("."):
            if not isinstance(data, dict) or part not in data:
                return False
            data = data[part]
        return True

    missing = [k for k in _schema_keys(load_schema()) if not has(from_file, k)]
    assert not missing


def test_every_key_is_explained_in_config_readme():
    text = (REPO / "config" / "README.md").read_text()
    undocumented = [k for k in _schema_keys(load_schema()) if f"`{k}`" not in text]
    assert not undocumented, f"config/README.md does not explain {undocumented}"


@pytest.mark.parametrize("bad, key, hint", [
    ({"demo": {"n_subject": 3}}, "demo.n_subject", "did you mean 'demo.n_subjects'"),
    ({"demo": {"video": {"widht": 64}}}, "demo.video.widht", "did you mean 'demo.video.width'"),
    ({"trr": 2.0}, "trr", "did you mean 'tr'"),
])
def test_unknown_key_is_an_error_naming_it(bad, key, hint):
    with pytest.raises(ConfigError, match=re.escape(f"unknown config key '{key}'")) as err:
        validate_config(bad)
    assert hint in str(err.value)


@pytest.mark.parametrize("bad, key", [
    ({"demo": {"n_trs": "many"}}, "demo.n_trs"),
    ({"demo": {"n_trs": 10}}, "demo.n_trs"),  # below the minimum
    ({"tr": -1.5}, "tr"),
    ({"demo": {"audio": {"sample_rate": 12345}}}, "demo.audio.sample_rate"),
    ({"demo": {"difficulty": {"ceiling_min": 0.8, "ceiling_max": 0.7}}}, "demo.difficulty.ceiling_min"),
])
def test_wrong_value_is_an_error_naming_the_key(bad, key):
    with pytest.raises(ConfigError, match=re.escape(f"invalid config key '{key}'")):
        validate_config(bad)


def test_benchmark_overlay_changes_only_its_keys():
    default = load_config(None)
    bench = load_config(REPO / "config" / "benchmark.yaml")
    assert (bench["demo"]["n_trs"], bench["demo"]["n_subjects"]) == (1976, 17)
    assert bench["demo"]["difficulty"] == default["demo"]["difficulty"]
    assert bench["tr"] == default["tr"]


def test_overrides_and_file_errors(tmp_path):
    config = load_config(None, ["demo.seed=3", "demo.video.fps=29.97"])
    assert config["demo"]["seed"] == 3 and config["demo"]["video"]["fps"] == 29.97
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml does not hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("demo:\n  sead: 1\n")
    with pytest.raises(ConfigError, match=r"demo\.sead.*typo\.yaml"):
        load_config(tmp_path / "typo.yaml")


def test_real_data_needs_inputs_and_real_weights():
    files = ["dataset=files", "inputs.movie=movie.mp4", "inputs.annotations=a.tsv",
             "stimulus.audio.weights=pretrained", "stimulus.text.pretrained=openai"]
    assert load_config(None, files)["dataset"] == "files"
    with pytest.raises(ConfigError, match=r"'inputs\.movie': required when dataset is 'files'"):
        load_config(None, [o for o in files if not o.startswith("inputs.movie")])
    with pytest.raises(ConfigError, match=r"'stimulus\.audio\.weights': 'demo-random' \(random weights\) is for the demo only"):
        load_config(None, [o for o in files if not o.startswith("stimulus.audio")])
    with pytest.raises(ConfigError, match=r"'stimulus\.text\.pretrained': 'none'"):
        load_config(None, [o for o in files if not o.startswith("stimulus.text")])
    # Without text, annotations are not needed and the text weights do not matter.
    no_text = [o for o in files if not o.startswith(("inputs.annotations", "stimulus.text"))]
    assert load_config(None, no_text + ["stimulus.text.enabled=false"])


def test_at_least_one_modality():
    off = [f"stimulus.{m}.enabled=false" for m in ("frames", "audio", "text")]
    with pytest.raises(ConfigError, match="every modality is disabled"):
        load_config(None, off)
    assert load_config(None, off[:2])["stimulus"]["text"]["enabled"]


def test_text_columns_preset_or_mapping():
    custom = load_config(None, ["stimulus.text.columns={onset: Start, offset: End, text: [A, B]}"])
    assert custom["stimulus"]["text"]["columns"]["text"] == ["A", "B"]
    with pytest.raises(ConfigError, match=r"'stimulus\.text\.columns'"):
        load_config(None, ["stimulus.text.columns=imdb"])
    with pytest.raises(ConfigError, match=r"'stimulus\.text\.columns'"):
        load_config(None, ["stimulus.text.columns={onset: Start, text: [A]}"])


def test_a_cached_validation_equals_a_fresh_one_and_errors_are_never_cached(tmp_path, monkeypatch):
    import copy

    from giblet import cache, config as config_module

    monkeypatch.setenv("GIBLET_CACHE_DIR", str(tmp_path / "cache"))
    raw = {"demo": {"n_trs": 123}, "train": {"lr": 0.002}}
    fresh = validate_config(copy.deepcopy(raw))
    assert len(list((tmp_path / "cache").glob("config-*.json"))) == 1
    with monkeypatch.context() as patch:  # a hit does not validate again
        patch.setattr("snakemake.utils.validate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
        assert validate_config(copy.deepcopy(raw)) == fresh
    assert fresh["demo"]["n_trs"] == 123 and fresh["train"]["epochs"] == load_config(None)["train"]["epochs"]

    # Another schema is another key: the same config is validated again (here: to the new default).
    schema = tmp_path / "schema.yaml"
    schema.write_text(config_module.SCHEMA_PATH.read_text().replace("default: results", "default: elsewhere", 1))
    monkeypatch.setattr(config_module, "SCHEMA_PATH", schema)
    assert validate_config(copy.deepcopy(raw))["results_dir"] == "elsewhere"

    # An invalid config raises every time, and leaves nothing in the cache.
    before = set((tmp_path / "cache").glob("config-*.json"))
    for _ in range(2):
        with pytest.raises(ConfigError, match="demo.n_trs"):
            validate_config({"demo": {"n_trs": "many"}})
    assert set((tmp_path / "cache").glob("config-*.json")) == before
    assert cache.read("config", "nonexistent") is None
