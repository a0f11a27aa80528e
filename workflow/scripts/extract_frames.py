from giblet.logs import setup_logging
from giblet.stimulus.frames import extract_frames

setup_logging(snakemake.log[0])
extract_frames(snakemake.input.movie, snakemake.output.frames, snakemake.params.tr, snakemake.params.frames)
