"""One function per pipeline stage: the Snakemake rule of that name and the ``giblet`` command call it.

A stage takes its rule's named inputs, outputs and params (:mod:`giblet.rules`) as keyword arguments,
plus, where its signature asks for them, what the job was granted (``threads``, ``gpus``) and the
whole ``train`` config section (``train_config``: training also reads keys that must not retrain).
:func:`run` is the one way in: it logs to the rule's log file and, when the stage fails, writes the
error (one line naming the file and the problem, then the traceback) there as well as to the
console, because on SLURM the log is where users look.

Each stage imports what it calls inside its body: a rule's ``code`` hash (:mod:`giblet.code_hash`)
follows exactly those imports, so editing a module reruns only the stages that use it.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

STAGES: dict[str, Callable] = {}


def stage(func: Callable) -> Callable:
    """Register ``func`` as the stage of the rule with its name."""
    STAGES[func.__name__] = func
    return func


@stage
def check_inputs(*, bold, confounds, brain_mask, mask_file, movie, annotations, report, config, progress=True):
    """Every input checked from its headers at once (:mod:`giblet.preflight`): a table per subject and
    run in the log; the JSON report when nothing is wrong, or beside it as ``*.failed.json`` and an
    error that stops the run. The files are read through ``config``."""
    from giblet.preflight import run_check

    run_check(config, Path(report))


@stage
def demo_dataset(*, movie, annotations, bold, truth, sidecar, demo, tr, progress=True):
    """The built-in synthetic data set; every output lands in the movie's folder."""
    from giblet.demo.generate import make_demo

    return make_demo(demo, tr, Path(movie).parent, progress=progress)


@stage
def extract_frames(*, movie, frames, sidecar, settings, tr, threads=1, progress=True):
    """Video frames per TR: uint8 (T, frames_per_tr, H, W, 3)."""
    from giblet.stimulus.frames import extract_frames as extract

    return extract(movie, frames, tr, settings, progress=progress, threads=threads)


@stage
def embed_frames(*, movie, frame_features, sidecar, settings, tr, threads=1, gpus=0, progress=True):
    """Frozen CLIP image embeddings of the frames sampled per TR: float16 (T, frames_per_tr, d)."""
    import torch

    from giblet.devices import job_device
    from giblet.stimulus.frame_features import embed_frames as embed

    torch.set_num_threads(threads)
    clip = {**settings["clip"], "device": job_device(settings["clip"]["device"], gpus, "stimulus.frames.clip.device")}
    return embed(movie, frame_features, tr, {**settings, "clip": clip}, progress=progress)


@stage
def encode_audio(*, movie, codes, sidecar, settings, tr, threads=1, gpus=0, progress=True):
    """EnCodec codes per TR: int16 (T, n_q, frames_per_tr)."""
    import torch

    from giblet.devices import job_device
    from giblet.stimulus.audio import encode_audio as encode

    torch.set_num_threads(threads)
    settings = {**settings, "device": job_device(settings["device"], gpus, "stimulus.audio.device")}
    return encode(movie, codes, tr, settings, progress=progress)


@stage
def embed_text(*, annotations, movie, text, mask, library, sidecar, settings, tr, threads=1, gpus=0, progress=True):
    """CLIP text embeddings of the annotations overlapping each TR: float32 (T, k, d) + mask."""
    import torch

    from giblet.devices import job_device
    from giblet.stimulus.text import embed_text as embed

    torch.set_num_threads(threads)
    settings = {**settings, "device": job_device(settings["device"], gpus, "stimulus.text.device")}
    return embed(annotations, movie, text, tr, settings, progress=progress)


@stage
def pretrain_frames(*, movie, frames, autoencoder, latents, sidecar, history, tensorboard, settings, tr, train_config,
                    threads=1, gpus=0, progress=True):
    """The frame autoencoder, learned from the movie's frames at ``settings["rate"]``; the latents of
    every TR's frames in ``frames.npy``. Returns the exit status (75 after a signal: a rerun resumes)."""
    import torch

    from giblet.pretrain.launch import launch_pretraining
    from giblet.pretrain.trainer import pretrain_params

    torch.set_num_threads(threads)
    params = pretrain_params(settings, train_config)
    return launch_pretraining("frames", frames, Path(autoencoder).parent, params, tr, movie,
                              min(int(settings["gpus"]), gpus))


@stage
def pretrain_audio(*, codes, autoencoder, latents, sidecar, history, tensorboard, settings, tr, train_config,
                   threads=1, gpus=0, progress=True):
    """The code autoencoder, learned from every chunk of the soundtrack's codes; the latents of every
    TR's chunks. Returns the exit status (75 after a signal: a rerun resumes)."""
    import torch

    from giblet.pretrain.launch import launch_pretraining
    from giblet.pretrain.trainer import pretrain_params

    torch.set_num_threads(threads)
    params = pretrain_params(settings, train_config)
    return launch_pretraining("audio", codes, Path(autoencoder).parent, params, tr, None,
                              min(int(settings["gpus"]), gpus))


@stage
def fmri_mask(*, bold, confounds, brain_mask, mask_file, movie, mask, info, runs, fmri, tr, progress=True):
    """Check every subject's runs (shape, affine, TR, length, confounds columns) and build the shared
    mask. The files are read through ``runs``; ``movie`` is given when the runs are placed on its clock
    (``inputs.runs``); ``mask_file``, when ``fmri.mask`` is a path, is read through ``fmri``."""
    from giblet.fmri.mask import prepare_fmri

    return prepare_fmri(runs, tr, fmri, Path(mask), Path(info), movie=Path(movie) if movie else None)


@stage
def normalize_fmri(*, bold, confounds, mask, info, split, z, sidecar, stats, normalize_on, cleaning, progress=True):
    """Clean each of one subject's runs, join them and z-score the masked time series, fitted on every
    TR or on the split's training block (``confounds`` are read through ``info``)."""
    from giblet.fmri.normalize import normalize_fitted_on
    from giblet.splits import read_training_block

    fit = "all" if normalize_on == "all" else read_training_block(split)
    return normalize_fitted_on(bold, mask, info, fit, z, stats, cleaning=cleaning, progress=progress)


@stage
def average_fmri(*, z, info, split, group, sidecar, ceiling, progress=True):
    """The group mean time series and the ISC noise ceiling, on the training block, over the subjects
    ``fmri_mask`` kept (``z`` holds every configured subject's, in ``info``'s order)."""
    import json

    from giblet.errors import InputError
    from giblet.fmri.group import average_subjects
    from giblet.splits import read_training_block

    fmri_info = json.loads(Path(info).read_text())
    if len(z) != len(fmri_info["per_subject"]):
        raise InputError(f"{info}: lists {len(fmri_info['per_subject'])} subjects, but {len(z)} z arrays were given")
    kept = [Path(path) for path, subject in zip(z, fmri_info["per_subject"]) if subject in fmri_info["subjects"]]
    return average_subjects(kept, Path(group), Path(ceiling), progress=progress, isc_trs=read_training_block(split))


@stage
def plan_split(*, info, movie, split, settings, shift_trs, modalities, tr, progress=True):
    """Train/val/test target blocks from the lengths in the fMRI and movie headers."""
    import json

    from giblet.splits import stimulus_trs_from_headers, write_split_plan

    fmri_info = json.loads(Path(info).read_text())
    stimulus_trs = stimulus_trs_from_headers(movie, tr, modalities)
    return write_split_plan(fmri_info, stimulus_trs, settings, shift_trs, split)


@stage
def assemble_dataset(*, stimulus, group, ceiling, mask, info, split, truth, manifest, stimulus_arrays, tr,
                     progress=True):
    """Check every array against the split and write the dataset manifest."""
    from giblet.data.assemble import assemble_dataset as assemble

    return assemble({role: Path(p) for role, p in stimulus_arrays.items()}, Path(group), Path(mask), Path(split),
                    Path(manifest), tr=tr, ceiling=Path(ceiling), fmri_info=Path(info),
                    truth=Path(truth) if truth else None)


@stage
def train(*, manifest, model, history, tensorboard, learning, train_config, gpus=0, progress=True):
    """Train or resume; returns the exit status (75 after a signal: a rerun resumes)."""
    from giblet.train.launch import granted_gpus, launch

    # Snakemake caps the job's gpus at --resources gpus=N: that many processes are started.
    settings = {**train_config, **learning, "gpus": granted_gpus(train_config["gpus"], gpus)}
    return launch(manifest, str(Path(model).parent), settings)


@stage
def verify_checkpoint(*, model, manifest, verify, progress=True):
    """model.pt loads with weights_only, is finite, and matches this very dataset."""
    from giblet.evaluate.verify import verify_checkpoint as verify_model

    return verify_model(model, manifest, verify)


@stage
def examine_weights(*, model, json, png, checkpoint, progress=True):
    """Statistics of every tensor, and of the optimizer state when the training checkpoint is there."""
    from giblet.evaluate.weights import examine_weights as examine

    return examine(model, json, png, checkpoint_path=checkpoint if Path(checkpoint).exists() else None)


@stage
def evaluate(*, model, manifest, verified, metrics, r_map, png, reliable_threshold, null_shifts, device, gpus=0,
             progress=True):
    """Per-voxel r over time, fraction of the ceiling, identification, decoding: metrics/ as a whole."""
    from giblet.devices import job_device
    from giblet.evaluate.evaluate import evaluate as score

    return score(model, manifest, Path(metrics).parent, reliable_threshold=reliable_threshold, n_null=null_shifts,
                 device=job_device(device, gpus, "evaluate.device"), r_map_name=Path(r_map).name)


@stage
def baseline_ridge(*, manifest, ridge, reliable_threshold, null_shifts, progress=True):
    """Banded ridge encoding and PCA-ridge decoding baselines, scored like the model."""
    from giblet.evaluate.ridge import write_ridge_baseline

    return write_ridge_baseline(manifest, ridge, reliable_threshold=reliable_threshold, n_null=null_shifts)


@stage
def plot_reconstructions(*, model, manifest, verified, figures, decoded, examples, reliable_threshold, device, gpus=0,
                         progress=True):
    """What the decoders reconstruct from the true brain: reconstructions/ as a whole (the figures, and
    ``decoded``, every test TR's decoded stimulus)."""
    from giblet.devices import job_device
    from giblet.evaluate.reconstructions import plot_reconstructions as plot

    return plot(model, manifest, Path(figures[0]).parent, n_examples=examples, reliable_ceiling=reliable_threshold,
                device=job_device(device, gpus, "evaluate.device"))


@stage
def lesion(*, model, manifest, verified, region_masks, json, png, regions, device, gpus=0, progress=True):
    """Zero one region at a time; how much each modality's decoding degrades. Real data without region
    masks get the intact decoding only."""
    from giblet.devices import job_device
    from giblet.evaluate.lesion import lesion as lesion_regions

    return lesion_regions(model, manifest, json, png, regions=dict(regions) or None, regions_required=False,
                          device=job_device(device, gpus, "evaluate.device"))


@stage
def training_summary(*, history, png, progress=True):
    """Loss curves per component, learning rate, gradient norm, throughput."""
    from giblet.evaluate.training_summary import training_summary as summarise

    return summarise(history, png)


@stage
def report_results(*, metrics, ridge, r_map, glass_brain, manifest, info, z_sidecars, summary, about, metrics_csv,
                   ridge_csv, html, viewer, slices, figures, description, space, progress=True):
    """The run's answer for the report: the results tables (CSV, HTML), the brain viewer and slices, the
    first page's figures, and the evaluation folder's BIDS dataset_description.json."""
    from giblet.evaluate.report_results import report_results as write_report

    return write_report(metrics, ridge, r_map, glass_brain, manifest, info, Path(summary).parent, description, space,
                        z_sidecars=z_sidecars)


def arguments(rule: str, config: dict, subject: str | None = None) -> dict:
    """Every keyword ``rule``'s stage takes from its files and params, from the config alone (the
    ``giblet`` command's way; Snakemake passes the same from the rule)."""
    from giblet import rules

    outputs = rules.outputs(rule, config)
    if subject is not None:
        outputs = {k: v.format(subject=subject) if isinstance(v, str) else v for k, v in outputs.items()}
    return {**rules.inputs(rule, config, subject), **outputs, **rules.params(rule, config)}


def run(rule: str, arguments: dict, *, logfile: str | None = None, threads: int = 1, gpus: int = 0,
        train_config: dict | None = None, progress: bool = True) -> int:
    """Run ``rule``'s stage with ``arguments``, logging to ``logfile`` too; returns an exit status.

    A failure is logged and becomes status 1, or 2 for bad input or config (as the ``giblet`` command
    exits): the message on the console and in the log, the traceback in the log (and on the console
    too for an unexpected error, which is a bug to report). A stage that returns an int (training:
    75 after a signal) passes it on.
    """
    from giblet.errors import ConfigError, InputError
    from giblet.logs import setup_logging, traceback_to_log_files

    setup_logging(logfile)
    func = STAGES[rule]
    accepted = inspect.signature(func).parameters
    extras = {"threads": threads, "gpus": gpus, "train_config": train_config, "progress": progress}
    kwargs = {**arguments, **{k: v for k, v in extras.items() if k in accepted}}
    try:
        result = func(**kwargs)
    except (ConfigError, InputError) as err:  # bad input: one line on the console, the traceback in the log
        log.error("%s failed: %s", rule, err)
        traceback_to_log_files(err)
        return 2
    except Exception as err:  # noqa: BLE001 - any failure must reach the rule's log, then fail the job
        log.error("%s failed: %s: %s", rule, type(err).__name__, err, exc_info=True)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def run_rule(snakemake) -> None:
    """The Snakemake side: the rule's named files and params (but ``code``), then exit with the status."""
    arguments = {**dict(snakemake.input.items()), **dict(snakemake.output.items()),
                 **{k: v for k, v in snakemake.params.items() if k != "code"}}
    status = run(snakemake.rule, arguments, logfile=snakemake.log[0] if snakemake.log else None,
                 threads=snakemake.threads, gpus=int(snakemake.resources.get("gpus", 0)),
                 train_config=snakemake.config["train"], progress=True)
    sys.exit(status)
