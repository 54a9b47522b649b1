"""Train a deep model on the exported features and score the test part back in Spark.

One entry for every deep model (``gmf``, ``mlp``, ``neumf``, ``neumf_explicit``,
``autorec``, ``cdae``; parameters from ``recsys_spark/conf/models/<model>.toml``).  The
training function is the same locally and distributed: ``--set
torch.distributor=local`` runs it in the driver process, ``spark`` runs it on
``torch.num_processes`` Spark tasks through TorchDistributor (gloo; CUDA with
``torch.use_gpu``), ``torchrun`` on driver processes.  Writes under
``<paths.output>/<dataset>/torch/<model>``: ``model/``, ``best.pt``,
``result.json`` and ``predictions/{ratings,topn}`` in the contract shapes.
Run ``export_features`` first.  Run it with::

    ./spark-submit.sh --master 'local[2]' train_torch --config conf/local.toml --model neumf \\
        --set torch.distributor=spark --set torch.num_processes=2

or in-process with ``recsys-spark train_torch --config conf/local.toml --model neumf``.
"""

import sys

from recsys_spark.cli import run_job


def main(argv=None):
    return run_job("train_torch", argv)


if __name__ == "__main__":
    sys.exit(main())
