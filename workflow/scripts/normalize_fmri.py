from giblet.fmri.normalize import normalize_for_split
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
normalize_for_split(snakemake.input.bold, snakemake.input.mask, snakemake.input.info, snakemake.input.split,
                    snakemake.params.normalize_on, snakemake.output.z, snakemake.output.stats)
