from pathlib import Path

from giblet.demo.generate import make_demo
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
make_demo(snakemake.params.demo, snakemake.params.tr, Path(snakemake.output.movie).parent)
