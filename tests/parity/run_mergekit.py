"""Run mergekit over a list of configs, inside mergekit's own virtual environment.

    <venv>/bin/python run_mergekit.py JOBS.json RESULTS.json

``JOBS.json`` is a list of ``{"config": path, "out": dir}``; each config is merged with
``mergekit.merge.run_merge`` (seed 0, no model card), one after another in this one process
(mergekit's start-up is paid once). ``RESULTS.json`` maps each config path to ``"ok"`` or
``"error: <exception type>: <message>"``. Nothing of evomerge is imported here.
"""

import json
import sys
import traceback


def main() -> None:
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    jobs = json.load(open(sys.argv[1]))
    results = {}
    for job in jobs:
        try:
            with open(job["config"]) as f:
                config = MergeConfiguration.model_validate(yaml.safe_load(f))
            options = MergeOptions(random_seed=0, quiet=True, write_model_card=False, copy_tokenizer=True)
            run_merge(config, job["out"], options=options)
            results[job["config"]] = "ok"
        except Exception as err:  # noqa: BLE001 - every failure is a result to compare
            message = " ".join(str(err).split())[:500]
            results[job["config"]] = f"error: {type(err).__name__}: {message}"
            traceback.print_exc(file=sys.stderr)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
