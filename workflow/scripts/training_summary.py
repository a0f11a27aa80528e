from giblet.evaluate.training_summary import training_summary
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
training_summary(snakemake.input.history, snakemake.output.png)
