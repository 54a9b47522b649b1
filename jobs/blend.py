"""Learn on the validation part how to combine the models; write the blended test ratings and top-N.

Reads ``predictions/<model>/{valid,test}`` of every member (``blend.members``, default
``models.names``), chooses the rating blend by cross-validation over validation users and
the top-N fusion by validation NDCG, and writes ``blend/level1/{valid,test}`` and
``blend/test/{ratings,topn}`` (see ``recsys_spark.blend``).

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
