"""Fit a content model on the pipeline's split; write what it learned and why it recommends.

Writes under ``<paths.output>/<dataset>/content/<model>``: ``features/`` (the
fitted Spark ML transform with its vocabulary, and the item vectors; load the
transform to featurise new items the same way), ``neighbors`` (content
item-item table ``(a, b, sim, support)``, the shape of the kNN tables),
``profile_sums`` / ``profile_counts`` (user profiles that new ratings update
without a recomputation), ``terms`` (the genres/tags whose items are rated
furthest from the baseline) and ``explanations`` (top-N lists with a reason per
item).  Parameters come from ``recsys_spark/conf/models/<model>.toml``.  Run it with::

    ./spark-submit.sh --master 'local[2]' content --config conf/local.toml

or in-process (local mode) with ``recsys-spark content --config conf/local.toml --model content``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("content", argv)


if __name__ == "__main__":
    sys.exit(main())
