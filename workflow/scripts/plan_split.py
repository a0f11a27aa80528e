import json

from giblet.logs import setup_logging
from giblet.splits import stimulus_trs_from_headers, write_split_plan

setup_logging(snakemake.log[0])
with open(snakemake.input.info) as f:
    info = json.load(f)
stimulus_trs = stimulus_trs_from_headers(snakemake.input.movie, snakemake.params.tr, snakemake.params.stimulus)
write_split_plan(info, stimulus_trs, snakemake.params.split, snakemake.params.shift_trs, snakemake.output.split)
