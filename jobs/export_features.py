"""Write the Parquet feature tables PyTorch jobs train on, for the pipeline's split.

Writes under ``<paths.output>/<dataset>/features/<split>``: ``interactions/
{train,valid,test}`` (user_idx, item_idx, rating, label, timestamp),
``negatives`` (seeded, never a training positive), ``items`` (genre multi-hot,
decade, top TF-IDF term ids when the content stage ran), ``users``
(demographic ids), ``histories`` (chronological per user) and
``metadata.json`` (vocabulary sizes, split, schemas).  Row-group size and
negatives per positive come from ``[export]``.  Run it with::

    ./spark-submit.sh --master 'local[2]' export_features --config conf/local.toml

or in-process with ``recsys-spark export_features --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("export_features", argv)


if __name__ == "__main__":
    sys.exit(main())
