"""Tuned defaults: read from the package data, from an install, a source tree or the shipped zip alike."""

import json
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

from recsys_spark import registry
from recsys_spark.recommender import Scale
from tests.conftest import ROOT

PACKAGED = ROOT / "recsys_spark" / "conf" / "models"


def _file_params(name):
    # an alias has no file of its own: it reads its target's (written out here, not taken from the registry)
    own = PACKAGED / f"{name}.toml"
    return tomllib.loads((own if own.is_file() else PACKAGED / f"{ {'cooccurrence': 'last_item'}[name]}.toml").read_text())["params"]


def test_every_registered_model_has_a_defaults_file_and_builds_with_its_values():
    for name in registry.REGISTRY:
        params = _file_params(name)  # read here with tomllib, not through the registry
        assert registry.model_params(name) == params
        if registry.is_deep(name):
            continue  # building imports torch; the deep tests cover these
        est = registry.build(name, Scale(1, 5))
        for key, value in params.items():
            assert getattr(est, key) == value, (name, key)


def test_an_alias_is_its_target_under_its_own_name(tmp_path):
    from recsys_spark.nextitem import LastItem

    co, last = registry.build("cooccurrence", Scale(1, 5)), registry.build("last_item", Scale(1, 5))
    assert isinstance(co, LastItem) and co.name == "cooccurrence" and last.name == "last_item"
    assert (co.window, co.max_next) == (last.window, last.max_next) == (10, 200)
    # a models folder's last_item file reaches the alias too, and its own file wins over that
    (tmp_path / "last_item.toml").write_text("[params]\nwindow = 3\n")
    assert registry.build("cooccurrence", Scale(1, 5), models_dir=tmp_path).window == 3
    (tmp_path / "cooccurrence.toml").write_text("[params]\nwindow = 4\n")
    assert registry.build("cooccurrence", Scale(1, 5), models_dir=tmp_path).window == 4


def test_defaults_differ_from_code_defaults_where_tuned():
    # ALS's tuned rank is not its dataclass default: a build that skipped the file would show it
    from recsys_spark.factorization.als import ALS

    assert ALS().rank != _file_params("als")["rank"] == registry.build("als", Scale(1, 5)).rank


def test_models_dir_replaces_one_model_and_falls_back_to_the_package(tmp_path):
    (tmp_path / "bias.toml").write_text("[params]\nreg_user = 3.0\nreg_item = 4.0\nn_iter = 2\n")
    bias = registry.build("bias", Scale(1, 5), models_dir=tmp_path)
    assert (bias.reg_user, bias.reg_item, bias.n_iter) == (3.0, 4.0, 2)
    assert registry.model_params("als", tmp_path) == _file_params("als")


def test_a_missing_defaults_file_is_an_error_naming_the_path(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "MODELS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/bias.toml"):
        registry.model_params("bias")
    monkeypatch.setitem(registry.REGISTRY, "mine", registry.REGISTRY["global_mean"])
    monkeypatch.setitem(registry._DEFAULTS, "mine", {"name": "mine"})
    assert registry.model_params("mine") == {"name": "mine"}


def _zip(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run([str(ROOT / "spark-submit.sh"), "--zip"], env=env, capture_output=True, text=True, check=True)
    built = tmp_path / "recsys_spark.zip"
    built.write_bytes(open(out.stdout.strip(), "rb").read())
    return built


PROBE = """
import json, recsys_spark
from recsys_spark import registry
from recsys_spark.recommender import Scale
knn = registry.build("item_knn", Scale(1, 5))
print(json.dumps({"file": recsys_spark.__file__, "als": registry.model_params("als"),
                  "knn": [knn.kernel, knn.damping, knn.reg_user]}))
"""


def test_the_shipped_zip_alone_carries_the_tuned_defaults(tmp_path):
    built = _zip(tmp_path)
    assert "recsys_spark/conf/models/als.toml" in zipfile.ZipFile(built).namelist()
    env = {**os.environ, "PYTHONPATH": str(built)}
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert got["file"].startswith(str(built))  # imported from the zip, not the source tree
    assert got["als"] == _file_params("als")
    knn = _file_params("item_knn")
    assert got["knn"] == [knn["kernel"], knn["damping"], knn["reg_user"]] == ["blocks", 0.25, 3.0]  # code: join, 0, 15

    # the same zip without its package data fails naming the file, instead of running code defaults
    stripped = tmp_path / "stripped.zip"
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(stripped, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith(".toml"):
                dst.writestr(item, src.read(item))
    env = {**os.environ, "PYTHONPATH": str(stripped)}
    res = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode != 0
    assert "recsys_spark/conf/models/item_knn.toml is missing" in res.stderr
