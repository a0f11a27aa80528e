"""A small data set shaped like the public Sherlock release (Chen et al. 2017), for testing
``config/sherlock.yaml`` offline.

What is real-shaped, and why it matters to the pipeline:

- ``sherlock_movie_s{N}.nii``: one uncompressed float32 4-D NIfTI per subject, ids ``1``, ``2``,
  ... without zero padding, on a 3 mm 61x73x61 MNI-like grid (x flipped, as in FSL's and SPM's
  3 mm templates), TR 1.5 s in the header. Voxels inside nilearn's MNI152 brain mask (resampled to
  that grid) carry signal, the rest are 0.
- The files are **pre-shifted by 3 TRs**, as the release's are: index ``t`` holds the volume
  acquired during stimulus TR ``t + 3``, so the HRF-delayed response lines up with the stimulus
  timestamps.
- The short subject (``"5"`` by default) mirrors the release's subject 5: the file has every
  volume, but its last ``n_missing`` volumes repeat the last acquired one (the release marks its
  50 missing TRs so), which ``fmri.short_subjects: drop`` detects and drops.
- The movie: H.264 at 29.97 fps (30000/1001) with a stereo AAC track, in an MP4 container named
  ``stimuli_Sherlock.m4v``, lasting ``n_trs`` TRs plus a fraction of one.
- ``Sherlock_Segments_1000_NN_2017.xlsx``: the real column names, trailing spaces included
  (``'Start Time (s) '``, ``'End Time (s) '``, ``'Scene Details - A Level '``, ...), segments of
  3-8 s covering the movie.

The signal is stimulus-driven and shared: the movie's picture and sound and the scenes follow
hidden latent time series (the demo's, :mod:`giblet.demo.latents`, rendered by the demo's own
:func:`giblet.demo.movie.write_movie`), and half of the brain voxels follow a random mix of the
HRF-convolved latents, identical across subjects, plus independent noise per subject.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

TR = 1.5
SHIFT_TRS = 3  # the release's fMRI is shifted back by 3 TRs against the stimulus timestamps
GRID_SHAPE = (61, 73, 61)
# 3 mm MNI-like affine: x flipped (radiological storage order), origin so that the grid covers MNI
# x -90..90, y -126..90, z -72..108 mm.
GRID_AFFINE = np.array([[-3.0, 0.0, 0.0, 90.0],
                        [0.0, 3.0, 0.0, -126.0],
                        [0.0, 0.0, 3.0, -72.0],
                        [0.0, 0.0, 0.0, 1.0]])
FPS = 30000 / 1001
MOVIE_NAME = "stimuli_Sherlock.m4v"
ANNOTATIONS_NAME = "Sherlock_Segments_1000_NN_2017.xlsx"
BOLD_PATTERN = "sherlock_movie_s{subject}.nii"
# The release's header names, trailing spaces included (the `sherlock` preset strips them).
COLUMNS = ["Segment Number", "Start Time (s) ", "End Time (s) ", "Scene Details - A Level ",
           "Space-In/Outdoor", "Name - All", "Location", "Music Presence "]
SIGNAL_FRACTION = 0.5  # of brain voxels that follow the stimulus
CEILING = 0.6  # correlation of one subject's signal voxel with the shared noise-free signal
OUTDOOR_PLACES = {"street", "garden"}


def grid_mask() -> np.ndarray:
    """nilearn's bundled MNI152 brain mask, resampled (nearest) onto the 61x73x61 grid: bool."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    mask = load_mni152_brain_mask(resolution=2)
    on_grid = resample_img(mask, target_affine=GRID_AFFINE, target_shape=GRID_SHAPE,
                           interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(on_grid.dataobj) > 0


def subject_ids(n_subjects: int, short_subject: str) -> list[str]:
    """``n_subjects`` release-style ids (``"1"``, ``"2"``, ...) that include ``short_subject``:
    the first ``n_subjects - 1`` others, then the short one, in numeric order."""
    others = [str(k) for k in range(1, 18) if str(k) != short_subject][:n_subjects - 1]
    return sorted(others + [short_subject], key=int)


def _design(latents, n_trs: int) -> np.ndarray:
    """Standardized HRF responses (n_trs, k) to the visual, auditory and place latents, as the
    pre-shifted files hold them: row ``t`` is the volume acquired during stimulus TR ``t + 3``."""
    from giblet.demo.latents import PLACES
    from giblet.timing import convolve_hrf, sample_at_volumes

    place = np.eye(len(PLACES))[latents.place_per_sample()]
    features = np.concatenate([latents.visual, latents.auditory, place], axis=1)
    response = sample_at_volumes(convolve_hrf(features, latents.dt), latents.dt, TR, n_trs + SHIFT_TRS)
    response = response[SHIFT_TRS:]
    response = response[:, response.std(0) > 0]  # a place the short movie never shows
    return (response - response.mean(0)) / response.std(0)


def _write_annotations(path: Path, latents, duration_s: float, rng: np.random.Generator) -> list[str]:
    """The segments as an xlsx with the release's column names; returns the scene texts."""
    from giblet.demo.latents import CHARACTERS, PLACES, annotation_text

    seg, dt = latents.segments, latents.dt
    rows, texts = [], []
    for i in range(len(seg.onset)):
        onset = round(float(seg.onset[i] * dt), 1)
        if onset >= duration_s:
            break
        place = PLACES[seg.place[i]]
        text = annotation_text(rng, seg.character[i], seg.place[i], seg.action[i])
        rows.append([i + 1, onset, round(float(seg.offset[i] * dt), 1), text,
                     "Outdoor" if place in OUTDOOR_PLACES else "Indoor", CHARACTERS[seg.character[i]],
                     place, "Yes" if rng.random() < 0.3 else "No"])
        texts.append(text)
    pd.DataFrame(rows, columns=COLUMNS).to_excel(path, index=False, engine="openpyxl")
    return texts


def _write_nifti(path: Path, masked: np.ndarray, mask: np.ndarray) -> None:
    """(n_trs, V) float32 into an uncompressed 4-D NIfTI on the grid, TR in pixdim[4]."""
    import nibabel as nib

    volume = np.zeros(mask.shape + (masked.shape[0],), dtype=np.float32)
    volume[mask] = masked.T
    image = nib.Nifti1Image(volume, GRID_AFFINE)
    image.set_sform(GRID_AFFINE, code=4)  # MNI152
    image.set_qform(GRID_AFFINE, code=4)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((3.0, 3.0, 3.0, TR))
    image.to_filename(path)


def make_sherlock_like(out_dir: str | Path, n_subjects: int = 3, n_trs: int = 72, short_subject: str = "5",
                       n_missing: int = 6, seed: int = 0, width: int = 160, height: int = 90,
                       sample_rate: int = 44100) -> dict:
    """Write the data set into ``out_dir`` (created); return what a test needs to know about it.

    ``n_trs`` is the length of the movie and of every subject's file in TRs; the short subject's
    last ``n_missing`` volumes repeat its last acquired one. Returns ``movie``, ``annotations``,
    ``bold`` ({id: path}), ``bold_pattern``, ``subjects``, ``short_subject``, ``n_trs``,
    ``n_missing``, ``tr``, ``shift_trs``, ``fps``, ``shape``, ``affine``, ``n_brain_voxels``,
    ``texts`` (the 'Scene Details - A Level ' cells, in order) and ``signal_mask`` (bool, on the
    grid: the voxels that follow the stimulus).
    """
    from giblet.demo.brain import ar1_noise
    from giblet.demo.generate import fine_step
    from giblet.demo.latents import make_latents
    from giblet.demo.movie import write_movie

    if n_subjects < 3:
        raise ValueError("need at least 3 subjects: 2 must remain after the short one is dropped")
    if not 0 < n_missing < n_trs - 2:
        raise ValueError(f"n_missing must be in [1, {n_trs - 3}]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, *key])

    # Latents long enough for the last volume's response (acquired SHIFT_TRS TRs after the movie's
    # last whole TR), plus a second of margin.
    latents = make_latents(stream(0), (n_trs + SHIFT_TRS) * TR + 1.0, fine_step(TR),
                           {"min_segment_s": 3.0, "max_segment_s": 8.0, "gap_fraction": 0.0})
    duration_s = n_trs * TR + 0.4  # a fraction of a TR more: floor(duration / tr) == n_trs
    movie_mp4 = out / "movie.mp4"  # PyAV picks the muxer from the name; .m4v would be raw MPEG-4 video
    write_movie(movie_mp4, latents, duration_s, TR, {"fps": FPS, "width": width, "height": height},
                sample_rate, stream(1), progress=False)
    movie = movie_mp4.rename(out / MOVIE_NAME)
    texts = _write_annotations(out / ANNOTATIONS_NAME, latents, duration_s, stream(2))

    mask = grid_mask()
    n_voxels = int(mask.sum())
    rng = stream(3)
    design = _design(latents, n_trs)
    has_signal = rng.random(n_voxels) < SIGNAL_FRACTION
    signal = design @ rng.standard_normal((design.shape[1], n_voxels))
    signal = ((signal - signal.mean(0)) / signal.std(0)).astype(np.float32)
    signal[:, ~has_signal] = 0
    weight = np.where(has_signal, CEILING, 0.0).astype(np.float32)
    signal_mask = np.zeros(GRID_SHAPE, dtype=bool)
    signal_mask[mask] = has_signal
    baseline = rng.uniform(700, 1300, n_voxels).astype(np.float32)

    subjects = subject_ids(n_subjects, short_subject)
    bold = {}
    for sub in subjects:
        noise = ar1_noise(stream(4, int(sub)), (n_trs, n_voxels), 0.3)
        total = weight * signal + np.sqrt(1 - weight**2) * noise
        data = (baseline * (1.0 + 0.02 * total)).astype(np.float32)
        if sub == short_subject:
            data[n_trs - n_missing:] = data[n_trs - n_missing - 1]  # missing scans: the last one repeated
        bold[sub] = out / BOLD_PATTERN.format(subject=sub)
        _write_nifti(bold[sub], data, mask)

    return {"movie": movie, "annotations": out / ANNOTATIONS_NAME, "bold": bold,
            "bold_pattern": str(out / BOLD_PATTERN), "subjects": subjects, "short_subject": short_subject,
            "n_trs": n_trs, "n_missing": n_missing, "tr": TR, "shift_trs": SHIFT_TRS, "fps": FPS,
            "shape": GRID_SHAPE, "affine": GRID_AFFINE.copy(), "n_brain_voxels": n_voxels, "texts": texts,
            "signal_mask": signal_mask}


def write_offline_weights(out_dir: str | Path, movie: str | Path) -> dict:
    """Local stand-ins for the pretrained EnCodec and CLIP weights, for running a ``dataset: files``
    config offline (the demo-only random weights are refused there).

    ``encodec``: the EnCodec 24 kHz architecture with random weights and codebooks seeded from
    the start of ``movie``'s audio (so codes vary), saved as a state dict like ``encodec_24khz-d7cc33bc.th``;
    ``clip``: a seeded random-init open_clip ViT-B-32, saved as ``.safetensors`` in float16 (half
    the size; loading casts to float32). Both go through the same loading code as real weights.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    from giblet.stimulus.audio import load_audio, load_encodec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seeding = load_audio(Path(movie))[:10 * 24000]  # codebooks from the first 10 s are varied enough
    encodec, _ = load_encodec("demo-random", 3.0, "cpu", seed=0, seeding_audio=seeding)
    encodec_path = out / "encodec_24khz_stand_in.th"
    torch.save(encodec.state_dict(), encodec_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clip = open_clip.create_model("ViT-B-32", pretrained=None)
    clip_path = out / "clip_vit_b_32_stand_in.safetensors"
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in clip.state_dict().items()},
              str(clip_path))
    return {"encodec": encodec_path, "clip": clip_path}
