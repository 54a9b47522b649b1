"""Run the whole pipeline, skipping stages whose outputs are up to date.

Run it with::

    ./spark-submit.sh --master 'local[2]' pipeline --config conf/local.toml

or in-process (local mode) with ``recsys-spark pipeline --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("pipeline", argv)


if __name__ == "__main__":
    sys.exit(main())
