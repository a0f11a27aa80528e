import sys
from pathlib import Path

from giblet.logs import setup_logging
from giblet.train.launch import granted_gpus, launch

setup_logging(snakemake.log[0])
params = dict(snakemake.config["train"])
# Snakemake caps the job's gpus at --resources gpus=N: that many processes are started.
params["gpus"] = granted_gpus(params["gpus"], int(snakemake.resources.gpus))
sys.exit(launch(snakemake.input.manifest, str(Path(snakemake.output.model).parent), params))
