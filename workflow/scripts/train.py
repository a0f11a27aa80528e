import sys
from pathlib import Path

from giblet.logs import setup_logging
from giblet.train.launch import launch

setup_logging(snakemake.log[0])
sys.exit(launch(snakemake.input.manifest, str(Path(snakemake.output.model).parent), dict(snakemake.params.train)))
