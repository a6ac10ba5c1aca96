"""Decode mergekit-evolve genotypes with mergekit-evolve itself and merge them, inside mergekit's
own virtual environment.

    <venv>/bin/python run_evolve_genome.py JOBS.json

``JOBS.json`` is a list of ``{"config": evol_merge_config.yml, "genotype": [floats], "out": dir}``:
each genotype goes through ``mergekit.evo.genome.ModelGenome.genotype_merge_config`` (the config
mergekit-evolve would merge for it), written to ``<out>.yml`` with ``dtype: float32`` instead of
mergekit-evolve's bfloat16 (the genome's meaning is under test, not the output dtype), and merged
with ``run_merge`` into ``out``. Nothing of evomerge is imported here.
"""

import json
import sys


def main() -> None:
    import numpy as np
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.evo.config import EvolMergeConfiguration
    from mergekit.evo.genome import ModelGenome
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    for job in json.load(open(sys.argv[1])):
        config = EvolMergeConfiguration.model_validate(yaml.safe_load(open(job["config"])))
        genome = ModelGenome(config.genome)
        merge = genome.genotype_merge_config(np.array(job["genotype"], dtype=np.float64)).model_dump(
            mode="json", exclude_none=True)
        merge["dtype"] = "float32"
        with open(job["out"] + ".yml", "w") as f:
            yaml.safe_dump(merge, f)
        options = MergeOptions(random_seed=0, quiet=True, write_model_card=False, copy_tokenizer=True)
        run_merge(MergeConfiguration.model_validate(merge), job["out"], options=options)


if __name__ == "__main__":
    main()
