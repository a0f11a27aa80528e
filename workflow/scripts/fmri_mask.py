from pathlib import Path

from giblet.fmri.mask import prepare_fmri
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
bold = {subject: Path(path) for subject, path in snakemake.params.bold.items()}
prepare_fmri(bold, snakemake.params.tr, snakemake.params.fmri, Path(snakemake.output.mask), Path(snakemake.output.info))
