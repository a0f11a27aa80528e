import torch

from giblet.devices import job_device
from giblet.logs import setup_logging
from giblet.stimulus.audio import encode_audio

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = dict(snakemake.params.audio)
params["device"] = job_device(params["device"], snakemake.resources.gpus, "stimulus.audio.device")
encode_audio(snakemake.input.movie, snakemake.output.codes, snakemake.params.tr, params)
