from pathlib import Path

from giblet.data.assemble import assemble_dataset
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
truth = Path(snakemake.input.truth) if snakemake.input.truth else None
assemble_dataset({role: Path(p) for role, p in snakemake.params.stimulus.items()}, Path(snakemake.input.group),
                 Path(snakemake.input.mask), Path(snakemake.input.split), Path(snakemake.output.manifest),
                 tr=snakemake.params.tr, ceiling=Path(snakemake.input.ceiling), fmri_info=Path(snakemake.input.info),
                 truth=truth)
