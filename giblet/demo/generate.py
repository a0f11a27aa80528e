"""Generate the built-in demo data set: movie, annotations, per-subject fMRI and the ground truth.

Everything is a deterministic function of the config's ``demo`` section and ``tr``: independent
random streams are keyed by (seed, purpose[, subject]), so for example adding subjects does not
change the movie or the first subjects' noise.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np

import giblet
from giblet.demo import brain
from giblet.demo.layout import output_paths, subject_ids
from giblet.demo.latents import (
    ACTIONS, AUDITORY_NAMES, CHARACTERS, PLACES, VISUAL_NAMES, Latents, annotation_text, make_latents,
)
from giblet.demo.movie import write_movie
from giblet.files import atomic_output_dir, write_json
from giblet.logs import progress as progress_bar

log = logging.getLogger(__name__)

# Keys of the independent random streams.
STREAM_LATENTS, STREAM_SOUND, STREAM_TEXT, STREAM_BRAIN, STREAM_SUBJECT = range(5)
# Target step of the fine latent grid (s); the actual step divides the TR exactly.
FINE_STEP_S = 0.1


def fine_step(tr: float) -> float:
    """The latent grid step: close to 0.1 s and an exact divisor of the TR."""
    return tr / max(1, round(tr / FINE_STEP_S))


def write_annotations(path: Path, latents: Latents, rng: np.random.Generator) -> int:
    """Write ``onset, offset, text`` rows (seconds, tab-separated) for the non-gap segments."""
    seg, dt = latents.segments, latents.dt
    rows = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["onset", "offset", "text"])
        for i in np.flatnonzero(~seg.is_gap):
            text = annotation_text(rng, seg.character[i], seg.place[i], seg.action[i])
            writer.writerow([f"{seg.onset[i] * dt:.3f}", f"{seg.offset[i] * dt:.3f}", text])
            rows += 1
    return rows


def mni_mask(resolution_mm: int) -> nib.Nifti1Image:
    from nilearn.datasets import load_mni152_brain_mask

    return load_mni152_brain_mask(resolution=resolution_mm)


def write_bold(path: Path, masked: np.ndarray, mask: np.ndarray, affine: np.ndarray, tr: float) -> None:
    """Write masked data (n_trs, V) as a 4-D float32 NIfTI in MNI space with TR in the header."""
    volume = np.zeros(mask.shape + (masked.shape[0],), dtype=np.float32)
    volume[mask] = masked.T
    image = nib.Nifti1Image(volume, affine)
    image.set_sform(affine, code=4)  # 4 = MNI152
    image.set_qform(affine, code=4)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms(tuple(np.abs(np.diag(affine)[:3])) + (tr,))
    image.to_filename(path)


def make_demo(demo: dict, tr: float, out_dir: str | Path, progress: bool = True) -> dict:
    """Generate the demo into ``out_dir`` (atomically: all files appear at the end, or none).

    ``demo`` is the validated ``demo`` config section. Returns the paths written (see
    :func:`output_paths`).
    """
    seed, n_trs, n_subjects = demo["seed"], demo["n_trs"], demo["n_subjects"]
    duration = n_trs * tr
    paths = output_paths(out_dir, n_subjects)
    timings = {}

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, *key])

    started = time.perf_counter()
    latents = make_latents(stream(STREAM_LATENTS), duration, fine_step(tr), demo["scenes"])
    with atomic_output_dir(out_dir) as tmp:
        t0 = time.perf_counter()
        movie = write_movie(tmp / "movie.mp4", latents, duration, tr, demo["video"],
                            demo["audio"]["sample_rate"], stream(STREAM_SOUND), progress)
        timings["movie_s"] = time.perf_counter() - t0
        n_annotations = write_annotations(tmp / "annotations.tsv", latents, stream(STREAM_TEXT))

        t0 = time.perf_counter()
        difficulty = demo["difficulty"]
        mask_img = mni_mask(demo["resolution_mm"])
        mask, affine = np.asarray(mask_img.dataobj) > 0, mask_img.affine
        ijk, xyz = brain.voxel_coordinates_mm(mask, affine)
        rng = stream(STREAM_BRAIN)
        labels = brain.assign_regions(xyz, difficulty["null_fraction"])
        ceiling = np.zeros(len(labels))
        has_signal = labels > 0
        ceiling[has_signal] = brain.uniform_by_rank(
            brain.smooth_field(rng, mask, demo["resolution_mm"])[has_signal],
            difficulty["ceiling_min"], difficulty["ceiling_max"])
        intensity = brain.smooth_field(rng, mask, demo["resolution_mm"])
        baseline = (1000.0 + 300.0 * np.tanh(intensity / intensity.std())).astype(np.float32)
        designs = brain.region_designs(latents, tr, n_trs)
        signal = brain.noise_free_signal(designs, labels, difficulty["nonlinear_fraction"], rng)
        ceiling = ceiling.astype(np.float32)
        (tmp / "fmri").mkdir()
        for sub, path in zip(progress_bar(subject_ids(n_subjects), "simulate fMRI", "subject", progress),
                             paths["bold"]):
            bold = brain.subject_bold(signal, ceiling, baseline, difficulty["ar1_phi"],
                                      stream(STREAM_SUBJECT, int(sub)))
            write_bold(tmp / "fmri" / path.name, bold, mask, affine, tr)
        timings["fmri_s"] = time.perf_counter() - t0

        np.savez(
            tmp / "truth.npz",
            signal=signal, region=labels, region_names=np.array(brain.REGION_NAMES),
            ceiling_single=ceiling, ceiling_group=brain.group_ceiling(ceiling, n_subjects).astype(np.float32),
            n_subjects=n_subjects, voxel_ijk=ijk.astype(np.int16), affine=affine, tr=tr,
            latent_dt=latents.dt, visual_latents=latents.visual, visual_names=np.array(VISUAL_NAMES),
            auditory_latents=latents.auditory, auditory_names=np.array(AUDITORY_NAMES),
            scene_codes=latents.scene_codes().astype(np.int8),
            characters=np.array(CHARACTERS), places=np.array(PLACES), actions=np.array(ACTIONS),
            **{f"design_{name}_linear": lin.astype(np.float32) for name, (lin, _) in designs.items()},
            **{f"design_{name}_nonlinear": nl.astype(np.float32) for name, (_, nl) in designs.items()},
        )
        timings["total_s"] = time.perf_counter() - started
        write_json(tmp / "demo.json", {
            "giblet_version": giblet.__version__, "tr": tr, "n_trs": n_trs, "duration_s": duration,
            "params": demo, "movie": movie, "n_annotations": n_annotations,
            "n_voxels": int(mask.sum()), "mask_shape": list(mask.shape),
            "voxels_per_region": {name: int((labels == k).sum()) for k, name in enumerate(brain.REGION_NAMES)},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        })
    log.info("demo written to %s in %.1f s (%d TRs, %d subjects, %d voxels)",
             out_dir, timings["total_s"], n_trs, n_subjects, mask.sum())
    return paths
