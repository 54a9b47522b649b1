"""Fit models on the pipeline's split; write their rating predictions and top-N lists on valid and test.

Writes ``<paths.output>/<dataset>/predictions/<model>/{valid,test}/{ratings,topn}`` (the
contract shapes every model shares).  Without ``--model`` every model of ``models.names``
runs in turn.

Run it with::

    ./spark-submit.sh --master 'local[2]' predict --config conf/local.toml --model bias

or in-process (local mode) with ``recsys-spark predict --config conf/local.toml --model bias``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("predict", argv)


if __name__ == "__main__":
    sys.exit(main())
