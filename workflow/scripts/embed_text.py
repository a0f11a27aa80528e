import torch

from giblet.logs import setup_logging
from giblet.stimulus.text import embed_text

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
embed_text(snakemake.input.annotations, snakemake.input.movie, snakemake.output.text, snakemake.params.tr,
           snakemake.params.text)
