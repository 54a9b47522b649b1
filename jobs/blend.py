"""Choose the model that is best on the validation part; write its test predictions as the blend.

Reads ``predictions/<model>/valid`` of every model in ``models.names``, ranks them by
``evaluate.select_metric`` and writes ``blend/test/{ratings,topn}``.

Run it with::

    ./spark-submit.sh --master 'local[2]' blend --config conf/local.toml

or in-process (local mode) with ``recsys-spark blend --config conf/local.toml``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("blend", argv)


if __name__ == "__main__":
    sys.exit(main())
