from pathlib import Path

from giblet.fmri.group import average_subjects
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
average_subjects([Path(p) for p in snakemake.input.z], Path(snakemake.output.group), Path(snakemake.output.ceiling),
                 isc_trs=snakemake.params.isc_trs)
