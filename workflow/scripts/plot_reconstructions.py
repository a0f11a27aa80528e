from pathlib import Path

from giblet.devices import job_device
from giblet.evaluate.reconstructions import plot_reconstructions
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params.evaluate
device = job_device(params["device"], snakemake.resources.gpus, "evaluate.device")
plot_reconstructions(snakemake.input.model, snakemake.input.manifest, Path(snakemake.output.figures[0]).parent,
                     n_examples=params["examples"], reliable_ceiling=params["reliable_threshold"],
                     device=device)
