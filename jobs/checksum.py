"""Content checksums of a run's outputs, to compare two runs (determinism, a rerun after a failure).

Reads ``<paths.output>/<dataset>/``: every Spark table (order-independent row hash) and every
result file, without the files and columns that record the run rather than its result
(``recsys_spark/checksum.py``).

Run it with::

    ./spark-submit.sh --master 'local[2]' checksum --config conf/local.toml --out build/run1.json
    ./spark-submit.sh --master 'local[2]' checksum --config conf/local.toml --against build/run1.json

or in-process with ``recsys-spark checksum --config conf/local.toml --out build/run1.json``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("checksum", argv)


if __name__ == "__main__":
    sys.exit(main())
