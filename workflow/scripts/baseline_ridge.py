from giblet.evaluate.ridge import write_ridge_baseline
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.evaluate
write_ridge_baseline(snakemake.input.manifest, snakemake.output.ridge, reliable_threshold=params["reliable_threshold"],
                     n_null=params["null_shifts"])
