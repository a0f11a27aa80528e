import json
import subprocess
import sys
from pathlib import Path

from giblet.logs import setup_logging
from giblet.train.loop import train

setup_logging(snakemake.log[0])
out_dir = str(Path(snakemake.output.model).parent)
n_gpus = int(snakemake.resources.get("gpus", 0))
if n_gpus > 1:  # one process per GPU
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", f"--nproc_per_node={n_gpus}", "-m", "giblet.train",
               snakemake.input.manifest, out_dir, "--params", json.dumps(snakemake.params.train)]
    sys.exit(subprocess.run(command).returncode)
sys.exit(train(snakemake.input.manifest, out_dir, snakemake.params.train))
