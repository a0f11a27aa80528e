from giblet.evaluate.lesion import lesion
from giblet.logs import setup_logging

setup_logging(snakemake.log[0])
lesion(snakemake.input.model, snakemake.input.manifest, snakemake.output.json, snakemake.output.png,
       regions=dict(snakemake.params.regions) or None, regions_required=False)
