"""Model quality at Sherlock's size: the trained model beside the banded ridge, the oracle and chance.

    python -m benchmarks.run quality                  # seeds 0 1 2
    python -m benchmarks.run quality --seeds 3 4 --quick

For each generator seed, the demo is generated at ``config/benchmark.yaml``'s size (1,976 TRs, 17
subjects) on the 4 mm grid (29,398 voxels: 3 mm, 69,217 voxels, costs ~2.5x the time and memory on
2 CPU cores and changes no conclusion), and Snakemake runs the pipeline up to the test metrics in
``results/quality/seed-<N>/``. Each seed keeps its folder, so after a model change only training and
evaluation rerun. ``--quick``: a 600-TR, 6-subject, 6 mm version for smoke runs
(``results/quality-quick/``).

Printed per seed, and as mean ± sd over seeds, everything on the held-out test block:

- fraction of the exact noise ceiling over reliable voxels (mean r / mean ceiling), overall and
  per simulated region, and mean r over reliable voxels;
- timepoint identification top-1 / top-5 among the test TRs;
- decoding identification top-1 per modality (``dec_<modality>_top1``): the stimulus decoded from the
  measured brain, ranked among the test TRs' stimuli; the baseline row is the ridge decoder;
- for the model, the banded ridge baseline (``ridge.json``), the oracle (ridge on the demo's true
  regressors, in ``metrics.json``) and chance;
- the frames in ``decoded_test.npz`` scored without the model (``recon_frames_top1``: each test row's
  mean frame on a 9 x 16 colour grid, ranked among the test rows' true frames);
- the pretrained autoencoders' own latents (``ae_<group>_r``: the demo's visual or auditory latents
  read linearly from them, fitted on the first 70 % of the movie, r on the rest; no brain involved);
- the demo's latents decoded from the brain (``lat_<group>_r``: mean test r over the group's latents;
  see ``benchmarks/latents.py``, every latent in ``benchmark-latents.json``), and the visual ones read
  the same way from the true frames (``lat_visual_true_frames_r``: that read-out's ceiling);
- wall time per stage (the sum over a stage's jobs, from the Snakemake log of the run that last ran it).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from benchmarks.latents import autoencoder_readout, latent_decoding


def score_decoded_frames(decoded_npz: Path, manifest_path: Path) -> dict | None:
    """``decoded_test.npz``'s frames scored without the model: each row's mean frame on the 9 x 16 colour
    grid against every test row's true frames (``frame_grid_identification``); None without frames."""
    import numpy as np

    from giblet.data.manifest import read_manifest
    from giblet.evaluate.decoding_identification import frame_grid_identification

    with np.load(decoded_npz) as decoded:
        if "frames" not in decoded:
            return None
        true = np.load(read_manifest(manifest_path).arrays["frames"].path, mmap_mode="r")[decoded["trs"]]
        return frame_grid_identification(decoded["frames"], true)

REPO = Path(__file__).resolve().parents[1]
SIZES = {False: {"resolution_mm": 4},
         True: {"n_trs": 600, "n_subjects": 6, "resolution_mm": 6}}
ROWS = ("model", "banded ridge", "oracle", "chance")


def seed_config(seed: int, quick: bool) -> tuple[Path, Path]:
    """Write the seed's config overlay (on top of config/benchmark.yaml); returns (overlay, results dir)."""
    results = REPO / "results" / ("quality-quick" if quick else "quality") / f"seed-{seed}"
    overlay = {"results_dir": str(results.relative_to(REPO)), "demo": {"seed": seed, **SIZES[quick]}}
    path = results.parent / f"seed-{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(overlay, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path, results


# A time stamp ends its line, which may begin with a progress bar's last update.
_STAMP = re.compile(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_START = re.compile(r"^(?:local)?rule (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_DONE = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def stage_seconds(log_text: str) -> dict[str, float]:
    """Seconds per rule (summed over its jobs) from a Snakemake log's time stamps."""
    now, pending, started, seconds = None, None, {}, {}
    for line in log_text.splitlines():
        if m := _STAMP.search(line.strip()):
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _START.match(line):
            pending = m.group(1)
        elif (m := _JOBID.match(line)) and pending:
            started[m.group(1)], pending = now, None
        elif (m := _DONE.match(line)) and m.group(1) in started and now:
            seconds[m.group(2)] = seconds.get(m.group(2), 0.0) + (now - started.pop(m.group(1))).total_seconds()
    return seconds


def run_seed(seed: int, quick: bool, cores: int) -> dict:
    """Run (or bring up to date) one seed's pipeline; returns its metrics, baseline and stage times."""
    overlay, results = seed_config(seed, quick)
    # Relative to the workflow directory, as the rules name them.
    targets = [(results / "evaluate" / "metrics" / "metrics.json").relative_to(REPO),
               (results / "evaluate" / "ridge.json").relative_to(REPO),
               (results / "evaluate" / "reconstructions" / "decoded_test.npz").relative_to(REPO)]
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile",
               "config/benchmark.yaml", str(overlay.relative_to(REPO)), "--", *map(str, targets)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall = time.perf_counter() - started
    (results / "benchmark-snakemake.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise RuntimeError(f"seed {seed}: snakemake failed (exit {done.returncode}); see "
                           f"{results / 'benchmark-snakemake.log'}:\n{(done.stdout + done.stderr)[-3000:]}")
    times_path = results / "benchmark-stage-seconds.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    times.update(stage_seconds(done.stdout + done.stderr))
    times_path.write_text(json.dumps(times, indent=1))
    latents = latent_decoding(results)
    latents["autoencoders"] = autoencoder_readout(results)
    (results / "benchmark-latents.json").write_text(json.dumps(latents, indent=1))
    return {"seed": seed, "metrics": json.loads((REPO / targets[0]).read_text()),
            "ridge": json.loads((REPO / targets[1]).read_text()), "latents": latents,
            "reconstructed_frames": score_decoded_frames(REPO / targets[2], results / "dataset" / "manifest.json"),
            "stage_seconds": times, "wall_seconds_this_run": wall}


def _fraction(fmri: dict) -> float | None:
    return (fmri.get("fraction_of_ceiling") or {}).get("ratio_of_means")


def _region_fractions(by_region: dict | None) -> dict:
    return {name: v["r_mean"] / v["ceiling_mean"] for name, v in (by_region or {}).items()
            if name != "null" and v.get("ceiling_mean")}


def seed_table(run: dict) -> dict[str, dict[str, float | None]]:
    """{row: {column: value}} for one seed (the columns named in the module docstring)."""
    metrics, ridge = run["metrics"], run["ridge"]
    oracle = metrics.get("oracle") or {}
    ident = metrics["fmri"]["identification"]
    rows = {
        "model": (metrics["fmri"], metrics.get("by_region")),
        "banded ridge": (ridge["fmri"], ridge.get("by_region")),
        "oracle": (oracle.get("fmri") or {}, oracle.get("by_region")),
    }
    table = {}
    for name, (fmri, regions) in rows.items():
        row = {"frac_ceiling": _fraction(fmri) if fmri else None,
               "r_reliable": fmri.get("r_mean_reliable"),
               "top1": (fmri.get("identification") or {}).get("top1"),
               "top5": (fmri.get("identification") or {}).get("top5")}
        row.update({f"frac_{k}": v for k, v in _region_fractions(regions).items()})
        table[name] = row
    table["chance"] = {"frac_ceiling": 0.0, "r_reliable": 0.0, "top1": ident["chance_top1"], "top5": ident["chance_top5"]}
    if run.get("reconstructed_frames"):  # decoded_test.npz's frames on the 9 x 16 grid
        table["model"]["recon_frames_top1"] = run["reconstructed_frames"]["top1"]
        table["chance"]["recon_frames_top1"] = run["reconstructed_frames"]["chance_top1"]
    for group, readout in ((run.get("latents") or {}).get("autoencoders") or {}).items():
        table["model"][f"ae_{group}_r"] = readout["r"]   # read from the pretrained latents (no brain)
    for name, decoded in (run.get("latents") or {}).items():
        if name == "true frames":  # the visual read-out from the true frames: its ceiling
            table["model"]["lat_visual_true_frames_r"] = decoded["group_r"]["visual"]
        if name in ("autoencoders", "true frames"):
            continue
        for group, r in decoded["group_r"].items():
            table[name][f"lat_{group}_r"] = r
            table["chance"][f"lat_{group}_r"] = 0.0
    for name, decoding in (("model", metrics.get("decoding_identification")),
                           ("banded ridge", ridge.get("decoding_identification"))):
        for modality, scores in (decoding or {}).items():
            table[name][f"dec_{modality}_top1"] = scores["top1"]
            table["chance"][f"dec_{modality}_top1"] = scores["chance_top1"]
    return table


def _format(table: dict) -> str:
    columns = sorted({c for row in table.values() for c in row}, key=lambda c: (not c.startswith("frac"), c))
    lines = [" | ".join(["", *columns])]
    for name, row in table.items():
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append("-" if v is None else v if isinstance(v, str) else f"{v:.3f}")
        lines.append(" | ".join([name, *cells]))
    return "\n".join(lines)


def summarize(tables: list[dict]) -> dict:
    """Mean ± sd over seeds of every cell present in all of them."""
    out = {}
    for name in tables[0]:
        out[name] = {}
        for column in tables[0][name]:
            values = [t[name].get(column) for t in tables]
            if all(isinstance(v, (int, float)) for v in values):
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                out[name][column] = f"{statistics.mean(values):.3f} ± {sd:.3f}"
    return out


def quality(quick: bool, seeds=(0, 1, 2), cores: int | None = None) -> dict:
    cores = cores or os.cpu_count() or 2
    runs, tables = [], []
    for seed in seeds:
        run = run_seed(seed, quick, cores)
        table = seed_table(run)
        runs.append(run)
        tables.append(table)
        print(f"\n## seed {seed}\n{_format(table)}\nstage seconds: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(run["stage_seconds"].items(), key=lambda kv: -kv[1])),
              flush=True)
    summary = summarize(tables)
    print(f"\n## mean ± sd over seeds {list(seeds)}\n{_format(summary)}", flush=True)
    return {"seeds": list(seeds), "quick": quick, "per_seed": tables, "mean_sd": summary,
            "stage_seconds": {run["seed"]: run["stage_seconds"] for run in runs}}
