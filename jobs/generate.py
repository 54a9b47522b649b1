"""Generate the embedded synthetic MovieLens-shaped dataset as raw CSV files.

Run it with::

    ./spark-submit.sh --master 'local[2]' generate --config conf/local.toml --set generate.n_ratings=1000000

or in-process (local mode) with ``recsys-spark generate --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("generate", argv)


if __name__ == "__main__":
    sys.exit(main())
