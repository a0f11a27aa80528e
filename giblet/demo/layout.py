"""Where the demo writes. Free of heavy imports: the Snakefile reads it at every start (importing the
generator would pull in scipy and nibabel, about 0.9 s of each no-op ``snakemake``)."""

from __future__ import annotations

from pathlib import Path


def subject_ids(n_subjects: int) -> list[str]:
    """'01', '02', ... (zero-padded to at least two digits, BIDS style)."""
    width = max(2, len(str(n_subjects)))
    return [f"{k:0{width}d}" for k in range(1, n_subjects + 1)]


def output_paths(out_dir: str | Path, n_subjects: int) -> dict:
    """Every file the demo writes, by role. The Snakemake rule declares exactly these."""
    out_dir = Path(out_dir)
    return {
        "movie": out_dir / "movie.mp4",
        "annotations": out_dir / "annotations.tsv",
        "bold": [out_dir / "fmri" / f"sub-{s}_bold.nii.gz" for s in subject_ids(n_subjects)],
        "truth": out_dir / "truth.npz",
        "sidecar": out_dir / "demo.json",
    }
