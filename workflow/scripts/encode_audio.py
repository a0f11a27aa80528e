import torch

from giblet.logs import setup_logging
from giblet.stimulus.audio import encode_audio

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
encode_audio(snakemake.input.movie, snakemake.output.codes, snakemake.params.tr, snakemake.params.audio)
