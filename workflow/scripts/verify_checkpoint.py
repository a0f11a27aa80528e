from giblet.evaluate.verify import verify_checkpoint
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
verify_checkpoint(snakemake.input.model, snakemake.input.manifest, snakemake.output.verify)
