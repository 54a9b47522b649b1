"""Fit a factorization model on the pipeline's split and write its factors and their meaning.

Writes ``user_factors``, ``item_factors``, ``interpretation`` (per factor: the
titles with the largest loadings, the genres and tags with the largest lift)
and ``interpretation.png`` under ``<paths.output>/<dataset>/factors/<model>``.
The model's parameters come from ``recsys_spark/conf/models/<model>.toml``.  Run it with::

    ./spark-submit.sh --master 'local[2]' factorize --config conf/local.toml --set factorize.model=nmf

or in-process (local mode) with ``recsys-spark factorize --config conf/local.toml --model nmf``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("factorize", argv)


if __name__ == "__main__":
    sys.exit(main())
