from pathlib import Path

import pytest

from recsys_spark.config import Config, ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_and_shipped_configs_load():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.split.protocol == "stratified" and cfg.split.seed == 42
    local = load_config(ROOT / "conf" / "local.toml")
    assert local.spark.master == "local[2]"
    cluster = load_config(ROOT / "conf" / "cluster.toml")
    assert cluster.paths.output.startswith("hdfs://")


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[split]\nsede = 7\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "split.sede" in msg and str(p) in msg and "seed" in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[splits]\nseed = 7\n")
    with pytest.raises(ConfigError, match="unknown key 'splits'"):
        load_config(p)


def test_wrong_type_names_key(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[split]\nseed = "seven"\n')
    with pytest.raises(ConfigError, match=r"split\.seed.*must be int.*'seven'"):
        load_config(p)


def test_bool_is_not_an_int(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[generate]\nn_users = true\n")
    with pytest.raises(ConfigError, match="generate.n_users"):
        load_config(p)


def test_literal_choices_checked():
    with pytest.raises(ConfigError, match="split.protocol.*one of"):
        load_config(None, ["split.protocol=shuffled"])


def test_overrides_apply_and_parse_types():
    cfg = load_config(None, ["split.seed=7", "split.ratio=0.8", "spark.master=local[4]", 'dataset.name="x"'])
    assert cfg.split.seed == 7
    assert cfg.split.ratio == 0.8
    assert cfg.spark.master == "local[4]"
    assert cfg.dataset.name == "x"


def test_override_unknown_key_is_an_error():
    with pytest.raises(ConfigError, match="--set.*unknown key 'split.sede'"):
        load_config(None, ["split.sede=7"])


def test_override_malformed():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("split.seed")


def test_range_checks():
    with pytest.raises(ConfigError, match="split.ratio"):
        load_config(None, ["split.ratio=1.5"])
    with pytest.raises(ConfigError, match="min_ratings_per_user"):
        load_config(None, ["generate.n_ratings=10"])


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "bad.toml"
    p.write_text("[split\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)


def test_section_hash_tracks_only_its_sections():
    a = load_config()
    b = load_config(None, ["split.seed=7"])
    assert a.section_hash("dataset", "ingest") == b.section_hash("dataset", "ingest")
    assert a.section_hash("split") != b.section_hash("split")


def test_paths_resolve(monkeypatch):
    monkeypatch.setenv("RECSYS_DATA_DIR", "/data/ml")
    cfg = load_config(None, ["dataset.kind=ml-100k"])
    assert cfg.dataset_path == "/data/ml/ml-100k"
    gen = load_config(None, ["paths.output=out"])
    assert gen.dataset_path == "out/generated/raw"
    assert gen.stage_path("splits", "stratified") == "out/generated/splits/stratified"


def test_make_run_config_covers_every_family_and_its_quick_settings_build():
    """README claim: `make run` fits every family (and blends them) with conf/quick's lighter settings."""
    from recsys_spark import registry
    from recsys_spark.recommender import Scale

    local = load_config(ROOT / "conf" / "local.toml")
    names = set(local.models.names)
    families = {
        "baselines": {"global_mean", "popularity", "bias"}, "neighbours": {"item_knn", "user_knn"},
        "factorization": {"als", "als_implicit", "svdpp", "nmf"}, "item-item": {"ease"}, "content": {"content", "content_hybrid"},
        "deep": {"autorec", "cdae"},
    }  # fmt: skip
    for family, members in families.items():
        assert members <= names, (family, members - names)
    assert local.split.valid_ratio > 0  # the blend learns on a validation part
    makefile = (ROOT / "Makefile").read_text()
    assert 'models.models_dir="conf/quick"' in makefile and "models.refit_for_test=false" in makefile
    assert local.final.enabled  # ... and ends with the final, explained top-N
    quick = ROOT / "conf" / "quick"
    for toml in quick.glob("*.toml"):
        name = toml.stem
        assert name in names, name
        est = registry.build(name, Scale(), models_dir=quick)  # every key known to the model
        own = registry.model_params(name, quick)
        assert own != registry.model_params(name), name  # lighter than the packaged defaults
        assert est is not None
