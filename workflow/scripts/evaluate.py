from pathlib import Path

from giblet.devices import job_device
from giblet.evaluate.evaluate import evaluate
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.evaluate
device = job_device(params["device"], snakemake.resources.gpus, "evaluate.device")
evaluate(snakemake.input.model, snakemake.input.manifest, Path(snakemake.output.metrics).parent,
         reliable_threshold=params["reliable_threshold"], n_null=params["null_shifts"], device=device)
