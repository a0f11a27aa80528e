from giblet.fmri.normalize import normalize_fitted_on
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
normalize_fitted_on(snakemake.input.bold, snakemake.input.mask, snakemake.input.info, snakemake.params.fit_trs,
                    snakemake.output.z, snakemake.output.stats)
