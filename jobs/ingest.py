"""Ingest raw rating files into validated Parquet tables, id maps and a quarantine table.

Run it with::

    RECSYS_DATA_DIR=../shared/datasets ./spark-submit.sh --master 'local[2]' ingest --config conf/local.toml --set dataset.kind=ml-100k

or in-process (local mode) with ``recsys-spark ingest --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
