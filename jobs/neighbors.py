"""Compute the kNN neighbour table (item-item or user-user) and write it to Parquet.

The table's similarity, shrinkage, cap, kernel and neighbourhood size come
from ``recsys_spark/conf/models/<neighbors.model>.toml``; ``neighbors.max_neighbors``
bounds the neighbours kept per entity.  Run it with::

    ./spark-submit.sh --master 'local[2]' neighbors --config conf/local.toml --set neighbors.model=user_knn

or in-process (local mode) with ``recsys-spark neighbors --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("neighbors", argv)


if __name__ == "__main__":
    sys.exit(main())
