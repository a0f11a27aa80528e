# Every rule's script: run the giblet stage named like the rule (giblet.stages) with the rule's named
# inputs, outputs and params; errors go to the rule's log as well as the console.
from giblet.stages import run_rule

run_rule(snakemake)
