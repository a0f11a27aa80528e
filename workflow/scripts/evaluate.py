from pathlib import Path

from giblet.evaluate.evaluate import evaluate
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.evaluate
evaluate(snakemake.input.model, snakemake.input.manifest, Path(snakemake.output.metrics).parent,
         reliable_threshold=params["reliable_threshold"], n_null=params["null_shifts"], device=params["device"])
