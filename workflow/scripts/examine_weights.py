from pathlib import Path

from giblet.evaluate.weights import examine_weights
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
checkpoint = Path(snakemake.params.checkpoint)  # the optimizer state is checked too when it is there
examine_weights(snakemake.input.model, snakemake.output.json, snakemake.output.png,
                checkpoint_path=checkpoint if checkpoint.exists() else None)
