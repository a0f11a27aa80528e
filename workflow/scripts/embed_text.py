import torch

from giblet.devices import job_device
from giblet.logs import setup_logging
from giblet.stimulus.text import embed_text

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = dict(snakemake.params.text)
params["device"] = job_device(params["device"], snakemake.resources.gpus, "stimulus.text.device")
embed_text(snakemake.input.annotations, snakemake.input.movie, snakemake.output.text, snakemake.params.tr, params)
