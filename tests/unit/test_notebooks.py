"""Notebooks run as plain scripts on small generated data."""

import pytest

from tests.notebooks import run_notebook

pytestmark = pytest.mark.slow


def test_week4_baselines(spark, tmp_path):
    ns = run_notebook(
        "week4_baselines", dataset="generated", output=str(tmp_path), models="popularity,bias", k="5",
        overrides="generate.n_users=60;generate.n_items=80;generate.n_ratings=2400;generate.min_ratings_per_user=8",
    )  # fmt: skip
    rows = ns["rows"]
    assert set(rows) == {"popularity", "bias"}
    assert rows["bias"]["rmse"] < 1.5
    assert rows["popularity"]["ndcg@5"] > 0
    assert (tmp_path / "week4_generated_data.png").stat().st_size > 1000
