"""Score every model and the blend on the test part.

Writes ``<paths.output>/<dataset>/evaluate/``: ``results`` (Parquet), ``per_user`` (per-user
metric values by model), ``results.json``, ``results.md`` and, with tracking on, one MLflow run.

Run it with::

    ./spark-submit.sh --master 'local[2]' evaluate --config conf/local.toml

or in-process (local mode) with ``recsys-spark evaluate --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
