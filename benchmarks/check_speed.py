"""``giblet check`` on a Sherlock-sized data set: 17 subjects x 1,976 TRs of 61x73x61 float32 NIfTI
(2.1 GB each, written as sparse files: the check reads headers only, so nothing else of them is
needed), and a movie of 2,964 s.

The reference, timed in the same run: loading every BOLD header with nibabel and probing the movie
with PyAV, the least any header check must do. The goal is "well under a minute"; the ratio says how
much the check adds to reading the headers.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import av
import nibabel as nib
import numpy as np

from giblet.config import validate_config

SHAPE = (61, 73, 61)
N_TRS = 1976
TR = 1.5


def _sparse_bold(path: Path, affine: np.ndarray) -> None:
    """A 4-D float32 NIfTI with a real header and no data written (a sparse file of the full size)."""
    image = nib.Nifti1Image(np.zeros(SHAPE + (1,), dtype=np.float32), affine)
    image.header.set_data_shape(SHAPE + (N_TRS,))
    image.header.set_zooms((3.0, 3.0, 3.0, TR))
    image.header.set_xyzt_units("mm", "sec")
    header = image.header
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * (int(header.get_data_offset()) - f.tell()))
    os.truncate(path, int(header.get_data_offset()) + int(np.prod(SHAPE)) * N_TRS * 4)


def _movie(path: Path, seconds: float) -> None:
    """A small silent movie of ``seconds`` at 1 frame per second (only its length matters here)."""
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for k in range(int(seconds) + 1):
            video = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video.pts = k
            container.mux(stream.encode(video))
        container.mux(stream.encode(None))


def input_check(quick: bool) -> dict:
    """Seconds of ``giblet check`` (the report and table included) against reading the headers."""
    from giblet.preflight import check_inputs, format_report
    from giblet.stimulus.media import probe_movie

    n_subjects = 4 if quick else 17
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for subject in range(1, n_subjects + 1):
            _sparse_bold(root / f"sherlock_movie_s{subject}.nii", affine)
        _movie(root / "movie.mp4", N_TRS * TR)
        config = validate_config({
            "dataset": "files", "tr": TR, "results_dir": str(root / "results"),
            "inputs": {"movie": str(root / "movie.mp4"), "bold": str(root / "sherlock_movie_s{subject}.nii"),
                       "subjects": [str(s) for s in range(1, n_subjects + 1)]},
            "fmri": {"shift_trs": 3}, "stimulus": {"audio": {"enabled": False}, "text": {"enabled": False}}})

        t0 = time.perf_counter()
        for subject in range(1, n_subjects + 1):
            image = nib.load(root / f"sherlock_movie_s{subject}.nii")
            image.header.get_zooms(), image.affine, image.shape
        probe_movie(root / "movie.mp4")
        reference_s = time.perf_counter() - t0

        seconds = []
        for _ in range(2):  # the first pays the imports (pandas, the config schema), as `giblet check` does
            t0 = time.perf_counter()
            report = check_inputs(config)
            format_report(report)
            seconds.append(time.perf_counter() - t0)
    if not report["ok"]:
        raise RuntimeError(f"the benchmark's data set should pass: {report['problems']}")
    return {"subjects": n_subjects, "trs": N_TRS, "grid": list(SHAPE),
            "check_seconds_first": round(seconds[0], 3), "check_seconds_again": round(seconds[1], 3),
            "reference_headers_seconds": round(reference_s, 3),
            "ratio_check_again_vs_headers": round(seconds[1] / reference_s, 2), "goal_seconds": 60}
