"""The ``report_results`` stage: a run's answer, as tables and brain views for ``snakemake --report``.

From ``metrics.json`` (the model, the oracle, the noise ceiling), ``ridge.json`` (the baseline), the
dataset manifest, ``fmri.json`` and the r map it writes, into one folder (atomically):

- ``summary.csv``: the headline, one row per measure, columns model | ridge baseline | oracle (demo
  only) | noise ceiling | chance: mean r over the reliable voxels and over all voxels, the fraction
  of the noise ceiling, timepoint identification, r per region (demo), decoding identification per
  modality, the circular-shift null's p-value. The report's first page (``workflow/report/workflow.rst``)
  shows it as its table;
- ``about.csv``: what was run (the data, the brain, the split, the stimulus, the model, the baseline,
  the ceiling) and the headline in one sentence, also on the first page;
- ``metrics.csv`` and ``ridge.csv``: every number of ``metrics.json`` and ``ridge.json``, one row per
  dotted key;
- ``results.html``: all of the above as one page of HTML tables (with the model's own decoding
  scores against their constant baselines);
- ``r_map_viewer.html``: nilearn's interactive viewer (``view_img``) of the r map, standalone (its
  JavaScript is inline: it works offline);
- ``r_map_slices.png``: the r map on axial slices (``plot_stat_map``), beside the glass brain;
- ``first_page_figures.html``: the glass brain and the slices as an HTML fragment with the images
  inline (data URIs), which the report's first page includes (Snakemake's ``embeddedfigure``
  directive links the file instead of embedding it, so the page would break once moved).

Plus ``dataset_description.json`` at the root of the evaluation folder, so that BIDS tools read it
as a derivatives dataset (the r map is ``metrics/[space-<label>_]desc-modelr_stat.nii.gz``).
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
from pathlib import Path

import numpy as np

from giblet.errors import InputError
from giblet.evaluate.cleaning_summary import cleaning_row
from giblet.files import atomic_output_dir, write_json

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
SUMMARY_COLUMNS = ["measure", "model", "ridge baseline", "oracle", "noise ceiling", "chance"]
DASH = "–"


def number(value, digits: int = 3) -> str:
    """``value`` as the tables print it: 3 decimals, ``–`` for none (also what the tests look for)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def _get(data: dict | None, dotted: str):
    """``data['a']['b']`` for ``'a.b'``; None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _read_json(path: str | Path, what: str) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, f"the {what} is missing: rerun the rule that writes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"the {what} is not valid JSON ({err}): rerun the rule that writes it") from None


def summary_rows(metrics: dict, ridge: dict) -> list[list[str]]:
    """The headline table, header first: one row per measure, the columns of ``SUMMARY_COLUMNS``
    (without ``oracle`` when there is none, i.e. on real data)."""
    oracle = metrics.get("oracle")
    fmri, base = metrics["fmri"], ridge.get("fmri", {})
    ora = (oracle or {}).get("fmri", {})
    n_reliable, n_voxels = fmri.get("n_reliable"), fmri.get("n_voxels")
    ident = fmri.get("identification") or {}
    rows = [
        [f"mean r over time, reliable voxels (n={number(n_reliable)})", fmri.get("r_mean_reliable"),
         base.get("r_mean_reliable"), ora.get("r_mean_reliable"),
         _get(fmri, "fraction_of_ceiling.mean_ceiling_reliable"), _get(fmri, "null.p95")],
        ["fraction of the noise ceiling (reliable voxels)", _get(fmri, "fraction_of_ceiling.ratio_of_means"),
         _get(base, "fraction_of_ceiling.ratio_of_means"), _get(ora, "fraction_of_ceiling.ratio_of_means"),
         1.0 if _get(fmri, "fraction_of_ceiling.ratio_of_means") is not None else None, None],
        [f"mean r over time, all voxels (n={number(n_voxels)})", fmri.get("r_mean"), base.get("r_mean"),
         ora.get("r_mean"), None, None],
        [f"timepoint identification, top-1 ({number(ident.get('n_trs'))} test TRs)", ident.get("top1"),
         _get(base, "identification.top1"), _get(ora, "identification.top1"), None, ident.get("chance_top1")],
    ]
    regions = metrics.get("by_region") or {}
    for name, region in regions.items():
        if name == "null" or not isinstance(region, dict):
            continue
        rows.append([f"mean r, {name} voxels (n={number(region.get('n_voxels'))})", region.get("r_mean"),
                     _get(ridge, f"by_region.{name}.r_mean"), _get(oracle, f"by_region.{name}.r_mean"),
                     region.get("ceiling_mean"), None])
    decoding = metrics.get("decoding_identification") or {}
    for modality, scores in decoding.items():
        rows.append([f"decoding {modality} from the brain: identification top-1 ({number(scores.get('n'))} TRs)",
                     scores.get("top1"), _get(ridge, f"decoding_identification.{modality}.top1"), None, None,
                     scores.get("chance_top1")])
    rows.append(["circular-shift null: p-value of the reliable-voxel mean r", _get(fmri, "null.p_value"),
                 _get(base, "null.p_value"), None, None, None])
    columns = list(SUMMARY_COLUMNS)
    if oracle is None:
        drop = columns.index("oracle")
        columns.pop(drop)
        rows = [row[:drop] + row[drop + 1:] for row in rows]
    return [columns] + [[row[0]] + [number(v) for v in row[1:]] for row in rows]


def _data_kind(manifest: dict, metrics: dict) -> str:
    if "truth" in manifest.get("arrays", {}):
        return "the built-in synthetic demo (ground truth known: exact noise ceiling, oracle)"
    return "your movie and fMRI (dataset: files)"


def about_rows(metrics: dict, ridge: dict, manifest: dict, fmri_info: dict, zooms, space: str | None
               ) -> list[list[str]]:
    """What was run, two columns (header first), ending with the headline in one sentence."""
    model = metrics.get("model", {})
    fmri = metrics["fmri"]
    subjects = fmri_info.get("subjects", [])
    dropped = fmri_info.get("dropped") or []
    n_targets = manifest.get("n_targets", {})
    voxel = "x".join(f"{z:g}" for z in zooms) + " mm"
    ceiling = metrics.get("ceiling", {})
    weights = model.get("weights") or {}
    readout = _get(weights, "readout.readout")
    test = metrics.get("test_range", [None, None])
    rows = [
        ["data", _data_kind(manifest, metrics)],
        ["subjects", f"{len(subjects)} ({', '.join(subjects)})" + (f"; dropped: {', '.join(dropped)}" if dropped
                                                                    else "") + ", averaged"],
        ["brain", f"{number(manifest.get('n_voxels'))} voxels of {voxel} in the mask; space: {space or 'not given'}"],
        ["time", f"TR {manifest.get('tr')} s; samples (target TRs) train {n_targets.get('train')}, validation "
                 f"{n_targets.get('val')}, test {n_targets.get('test')} (TRs {test[0]}-{test[1] - 1 if test[1] else ''}"
                 ", held out: every number here is on them)"],
        ["stimulus", f"{', '.join(sorted(manifest.get('modalities', {})))}; each sample sees the last "
                     f"{manifest.get('lag_trs')} TRs of the movie"],
        ["model", f"giblet autoencoder, preset {model.get('preset')}: epochs {model.get('epochs')} "
                  f"(steps {model.get('steps')}), weights from epoch {weights.get('epoch')} (best validation)"
                  + (f", fMRI readout refitted by {readout}" if readout else "")],
        ["baseline", "banded ridge (himalaya) on lagged hand-made stimulus features, one penalty per modality "
                     f"and voxel; decoders: {ridge.get('decoder', 'ridge')}"],
        ["noise ceiling", f"{ceiling.get('source')}; reliable voxels: {ceiling.get('reliable_rule')} "
                          f"({number(fmri.get('n_reliable'))} of {number(fmri.get('n_voxels'))})"],
    ]
    if metrics.get("oracle"):
        rows.append(["oracle", metrics["oracle"].get("method", "")])
    rows.append(["chance", "r: 95th percentile of the circular-shift null; identification: 1 / number of test TRs"])
    rows.append(["headline", headline(metrics, ridge)])
    return [["", "this run"]] + rows


def headline(metrics: dict, ridge: dict) -> str:
    """One sentence: how much of the explainable signal the model captures, against the baseline."""
    fmri = metrics["fmri"]
    ours, theirs = _get(fmri, "fraction_of_ceiling.ratio_of_means"), _get(ridge, "fmri.fraction_of_ceiling.ratio_of_means")
    if ours is not None:
        text = (f"the model predicts {number(ours)} of the noise ceiling on the reliable voxels "
                f"(ridge baseline {number(theirs)}")
        oracle = _get(metrics, "oracle.fmri.fraction_of_ceiling.ratio_of_means")
        text += f", oracle {number(oracle)})" if oracle is not None else ")"
    else:
        text = (f"the model's mean r over time is {number(fmri.get('r_mean_reliable'))} "
                f"(ridge baseline {number(_get(ridge, 'fmri.r_mean_reliable'))})")
    better = fmri.get("r_mean_reliable") is not None and _get(ridge, "fmri.r_mean_reliable") is not None and \
        fmri["r_mean_reliable"] > ridge["fmri"]["r_mean_reliable"]
    return text + ("; it beats the baseline" if better else "; it does not beat the baseline") + \
        f"; null p = {number(_get(fmri, 'null.p_value'))}"


def flat_rows(data, prefix: str = "") -> list[list[str]]:
    """Every leaf of a JSON document as ``[dotted key, value]`` (lists of scalars joined by spaces)."""
    rows = []
    if isinstance(data, dict):
        for key, value in data.items():
            rows += flat_rows(value, f"{prefix}{key}.")
        return rows
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, value in enumerate(data):
            rows += flat_rows(value, f"{prefix}{i}.")
        return rows
    if isinstance(data, list):
        value = " ".join(number(v, 4) if isinstance(v, float) else str(v) for v in data)
    elif isinstance(data, float):
        value = number(data, 4)
    else:
        value = DASH if data is None else str(data)
    return [[prefix.rstrip("."), value]]


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def html_table(rows: list[list[str]], caption: str, css_class: str = "") -> str:
    head, *body = rows
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return (f'<table class="{css_class}"><caption>{html.escape(caption)}</caption><thead><tr>{cells}</tr></thead>'
            f"<tbody>{lines}</tbody></table>")


def decoding_rows(metrics: dict) -> list[list[str]]:
    """The model's own decoding scores, each beside its constant baseline or chance."""
    dec = metrics.get("decoding") or {}
    rows = [["modality", "score", "model", "baseline or chance", "baseline"]]
    if "frames" in dec:
        f = dec["frames"]
        rows.append(["frames", "pixel r", number(f.get("pixel_r_mean")), number(f.get("r_mean_baseline_mean_frame")),
                     "the training block's mean frame"])
        rows.append(["frames", "MSE (lower is better)", number(f.get("mse"), 4), number(f.get("mse_baseline_mean_frame"), 4),
                     "the training block's mean frame"])
    if "frame_features" in dec:
        f = dec["frame_features"]
        rows.append(["frame features", "CLIP frame retrieval top-1", number(f.get("top1")), number(f.get("chance_top1")),
                     f"chance (1 of {f.get('n_candidates')})"])
    if "audio_codes" in dec:
        a = dec["audio_codes"]
        chance = a.get("chance_most_frequent")
        rows.append(["audio", "EnCodec code accuracy", number(a.get("accuracy_mean")),
                     number(float(np.mean(chance)) if chance else None), "each codebook's most frequent code"])
    if "text" in dec:
        t = dec["text"]
        rows.append(["text", "annotation retrieval top-1", number(t.get("top1")), number(t.get("chance_top1")),
                     f"chance (1 of {t.get('n_candidates')})"])
    return rows


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>giblet results</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0 2em; font-size: 0.9em; }}
caption {{ text-align: left; font-weight: bold; font-size: 1.1em; padding-bottom: 0.4em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #eef; }}
table.numbers td + td {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body>
<h1>What the model learned</h1>
<p>{headline}.</p>
{tables}
<details><summary>Every number of metrics.json</summary>{metrics}</details>
<details><summary>Every number of ridge.json</summary>{ridge}</details>
</body></html>
"""


def write_brain_views(r_map: str | Path, viewer_html: str | Path, slices_png: str | Path, threshold: float,
                      title: str, space: str | None) -> None:
    """The interactive viewer (nilearn ``view_img``, standalone HTML) and a ``plot_stat_map`` figure
    of axial slices. On an MNI152 space the template is the background; otherwise there is none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn import plotting

    image = nib.load(r_map)
    data = np.asarray(image.dataobj, dtype=np.float64)
    vmax = max(float(np.abs(data).max()) if data.size else 0.0, threshold, 1e-6)
    on_mni = bool(space) and space.startswith("MNI152")
    if on_mni:
        from nilearn.datasets import load_mni152_template

        template = load_mni152_template(resolution=2)
    view = plotting.view_img(image, bg_img=template if on_mni else False, threshold=threshold, vmax=vmax, cmap="RdBu_r",
                             symmetric_cmap=True, title=f"{title} | |r| >= {threshold:.2f}",
                             black_bg=True, width_view=900)
    view.save_as_html(str(viewer_html))
    display = plotting.plot_stat_map(image, bg_img=template if on_mni else None, threshold=threshold, vmax=vmax,
                                     figure=plt.figure(figsize=(16, 3.2)), cmap="RdBu_r", display_mode="z",
                                     cut_coords=7, colorbar=True,
                                     title=f"{title} | |r| >= {threshold:.2f} shown", black_bg=True)
    try:
        display.savefig(str(slices_png), dpi=100)
    finally:
        display.close()
        plt.close("all")


def dataset_description(metrics: dict, space: str | None) -> dict:
    """BIDS derivatives' ``dataset_description.json`` for the evaluation folder."""
    from giblet import __version__

    return {
        "Name": "giblet evaluation: encoding accuracy of a movie-to-brain model",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "giblet", "Version": __version__,
                         "Description": "per-voxel Pearson r between the predicted and the measured group fMRI "
                                        f"over the held-out test TRs ({metrics.get('split', 'test')} block): "
                                        "metrics/*_desc-modelr_stat.nii.gz, in "
                                        f"{f'space {space}' if space else 'the data space (inputs.space not given)'}"}],
    }


def figures_fragment(images: list[tuple[bytes, str]]) -> str:
    """An HTML fragment of PNG figures with their captions, the images inline as data URIs."""
    import base64

    parts = [f'<figure style="margin: 0.5em 0 1.5em"><img alt="{html.escape(caption)}" style="width: 100%" '
             f'src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
             f"<figcaption>{html.escape(caption)}</figcaption></figure>" for png, caption in images]
    return '<div class="giblet-figures">' + "".join(parts) + "</div>\n"


def report_results(metrics: str | Path, ridge: str | Path, r_map: str | Path, glass_brain: str | Path,
                   manifest: str | Path, info: str | Path, out_dir: str | Path, description: str | Path,
                   space: str | None, z_sidecars: list[str | Path] = ()) -> dict:
    """Write the tables, the HTML page and the brain views into ``out_dir`` (all or nothing) and
    ``description`` (``dataset_description.json``). Returns the summary rows. ``z_sidecars``, the
    subjects' z arrays' sidecars, give the "cleaning" row of "what was run".

    Raises
    ------
    InputError naming the file: a JSON input is missing or malformed, or the r map is missing.
    """
    scores, baseline = _read_json(metrics, "model's metrics.json"), _read_json(ridge, "ridge baseline's ridge.json")
    data, fmri_info = _read_json(manifest, "dataset manifest"), _read_json(info, "fMRI summary fmri.json")
    if "fmri" not in scores:
        raise InputError(metrics, "has no 'fmri' section: rerun evaluate")
    for path in (Path(r_map), Path(glass_brain)):
        if not path.exists():
            raise InputError(path, "missing: rerun evaluate")
    import nibabel as nib

    zooms = nib.load(r_map).header.get_zooms()[:3]
    summary = summary_rows(scores, baseline)
    about = about_rows(scores, baseline, data, fmri_info, zooms, space)
    cleaning = cleaning_row([_read_json(Path(p), "z array's sidecar") for p in z_sidecars])
    if cleaning:
        about.insert(4, cleaning)  # after the brain: what was done to it
    threshold = float(_get(scores, "r_map.plot_threshold") or 0.1)
    test = scores.get("test_range", [0, 0])
    title = f"Per-voxel r over time, test TRs {test[0]}-{test[1] - 1} (N={scores.get('n_test')})"
    tables = "\n".join([
        html_table(summary, "The model against the ridge baseline, the oracle, the noise ceiling and chance "
                            "(test block)", "numbers"),
        html_table(about, "What was run"),
        html_table(decoding_rows(scores), "What the decoders recover from the brain (model)", "numbers"),
    ])
    sentence = headline(scores, baseline)
    page = PAGE.format(headline=html.escape(sentence[0].upper() + sentence[1:]),
                       tables=tables, metrics=html_table([["key", "value"]] + flat_rows(scores), "metrics.json"),
                       ridge=html_table([["key", "value"]] + flat_rows(baseline), "ridge.json"))
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "summary.csv").write_text(csv_text(summary))
        (tmp / "about.csv").write_text(csv_text(about))
        (tmp / "metrics.csv").write_text(csv_text([["key", "value"]] + flat_rows(scores)))
        (tmp / "ridge.csv").write_text(csv_text([["key", "value"]] + flat_rows(baseline)))
        (tmp / "results.html").write_text(page)
        write_brain_views(r_map, tmp / "r_map_viewer.html", tmp / "r_map_slices.png", threshold, title, space)
        (tmp / "first_page_figures.html").write_text(figures_fragment([
            (Path(glass_brain).read_bytes(), "Where the model predicts the brain: per-voxel r over the test TRs "
                                             "(glass brain); voxels below the null's 95th percentile are not drawn."),
            ((tmp / "r_map_slices.png").read_bytes(), "The same map on axial slices. The interactive viewer is "
                                                      "under Brain prediction.")]))
    write_json(description, dataset_description(scores, space))
    log.info("report tables and brain views -> %s; %s", out_dir, sentence)
    return {"summary": summary, "about": about}
