"""Readers and file-level checks on tiny inline files."""

import pytest
from pyspark.sql import functions as F

from recsys_spark.io.datasets import DataFormatError, dataset_spec, parse_file, read_dataset
from recsys_spark.io.lines import read_lines
from tests.conftest import write


def rows(df, *cols):
    return sorted(tuple(r[c] for c in cols) for r in df.collect())


def test_line_numbers_per_file_across_many_partitions(spark, tmp_path):
    # 3 part files; tiny split size so each file spans several partitions
    for k in range(3):
        write(tmp_path / "d" / f"part-{k}.csv", "".join(f"{k},{i}\n" for i in range(1, 401)))
    spark.conf.set("spark.sql.files.maxPartitionBytes", "512")
    spark.conf.set("spark.sql.files.openCostInBytes", "0")
    try:
        df = read_lines(spark, str(tmp_path / "d"))
        assert df.rdd.getNumPartitions() > 3
        got = df.select("source_file", "line_no", "raw").collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
        spark.conf.unset("spark.sql.files.openCostInBytes")
    assert len(got) == 1200
    for r in got:
        k, i = r["raw"].split(",")
        assert r["source_file"].endswith(f"part-{k}.csv")
        assert r["line_no"] == int(i), r


def test_latin1_decoding(spark, tmp_path):
    p = write(tmp_path / "u.item", "1|Misérables (1995)|x\n", encoding="latin-1")
    raw = read_lines(spark, p, "ISO-8859-1").first()["raw"]
    assert raw == "1|Misérables (1995)|x"


def test_missing_file_names_it(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_lines(spark, str(tmp_path / "nope.csv"))


def _ml100k(tmp_path, data="1\t10\t5\t881250949\n2\t20\t3\t891717742\n"):
    root = tmp_path / "ml-100k"
    write(root / "u.data", data)
    flags = "|".join(["0"] * 19)
    action = "|".join(["0", "1"] + ["0"] * 17)
    write(
        root / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n20|GoldenEye (1995)|01-Jan-1995||http://y|{action}\n",
    )
    write(root / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return root


def test_ml100k_layout(spark, tmp_path, cfg_factory):
    root = _ml100k(tmp_path)
    cfg = cfg_factory("dataset.kind=ml-100k", f'dataset.path="{root}"')
    tables = read_dataset(spark, dataset_spec(cfg))
    ratings, n = tables["ratings"]
    assert n == 2
    assert rows(ratings, "user", "item", "rating", "timestamp") == [
        ("1", "10", "5", "881250949"),
        ("2", "20", "3", "891717742"),
    ]
    items, _ = tables["items"]
    assert rows(items, "item", "title", "genres", "year") == [
        ("10", "Toy Story (1995)", "", "1995"),
        ("20", "GoldenEye (1995)", "Action", "1995"),
    ]
    users, _ = tables["users"]
    assert rows(users, "user", "age", "gender", "occupation", "zip") == [
        ("1", "24", "M", "technician", "85711"),
        ("2", "53", "F", "other", "94043"),
    ]


def test_ml1m_layout(spark, tmp_path, cfg_factory):
    root = tmp_path / "ml-1m"
    write(root / "ratings.dat", "1::1193::5::978300760\n")
    write(root / "movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n", encoding="latin-1")
    write(root / "users.dat", "1::F::1::10::48067\n")
    cfg = cfg_factory("dataset.kind=ml-1m", f'dataset.path="{root}"')
    tables = read_dataset(spark, dataset_spec(cfg))
    assert rows(tables["ratings"][0], "user", "item", "rating") == [("1", "1193", "5")]
    assert rows(tables["items"][0], "title", "genres", "year") == [
        ("One Flew Over the Cuckoo's Nest (1975)", "Drama", "1975")
    ]
    assert rows(tables["users"][0], "gender", "age", "occupation") == [("F", "1", "10")]


def test_latest_csv_with_quoted_commas(spark, tmp_path, cfg_factory):
    root = tmp_path / "ml-latest-small"
    write(root / "ratings.csv", "userId,movieId,rating,timestamp\n1,11,4.5,964982703\n")
    write(
        root / "movies.csv",
        'movieId,title,genres\n11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '12,"Say ""Hi"" (2001)",(no genres listed)\n',
    )
    write(root / "tags.csv", 'userId,movieId,tag,timestamp\n1,11,"funny, smart",1445714994\n')
    cfg = cfg_factory("dataset.kind=ml-latest", f'dataset.path="{root}"')
    tables = read_dataset(spark, dataset_spec(cfg))
    assert rows(tables["items"][0], "item", "title", "genres", "year") == [
        ("11", "American President, The (1995)", "Comedy|Drama|Romance", "1995"),
        ("12", 'Say "Hi" (2001)', "(no genres listed)", "2001"),
    ]
    assert rows(tables["tags"][0], "tag") == [("funny, smart",)]
    assert tables["ratings"][1] == 1  # the header is not a data row


@pytest.mark.parametrize(
    "fmt,text,columns",
    [
        ("csv", "u,i,stars\nA,x,4\nB,y,2\n", '{user="u", item="i", rating="stars"}'),
        ("tsv", "A\tx\t4\nB\ty\t2\n", "{user=0, item=1, rating=2}"),
        ("whitespace", "  A   x 4\nB y\t2  \n", "{user=0, item=1, rating=2}"),
    ],
)
def test_generic_text_formats(spark, tmp_path, cfg_factory, fmt, text, columns):
    p = write(tmp_path / f"r.{fmt}", text)
    header = "true" if fmt == "csv" else "false"
    cfg = cfg_factory(
        "dataset.kind=generic", f'dataset.generic.ratings="{p}"', f"dataset.generic.format={fmt}",
        f"dataset.generic.header={header}", f"dataset.generic.columns={columns}",
        "dataset.rating_min=1", "dataset.rating_max=5",
    )  # fmt: skip
    df, n = read_dataset(spark, dataset_spec(cfg))["ratings"]
    assert n == 2
    assert rows(df, "user", "item", "rating", "timestamp") == [("A", "x", "4", None), ("B", "y", "2", None)]


def test_generic_parquet(spark, tmp_path, cfg_factory):
    p = str(tmp_path / "r.parquet")
    spark.createDataFrame([("A", "x", 4.5, 10)], "who string, what string, r double, t long").write.parquet(p)
    cfg = cfg_factory(
        "dataset.kind=generic", f'dataset.generic.ratings="{p}"', "dataset.generic.format=parquet",
        'dataset.generic.columns={user="who", item="what", rating="r", timestamp="t"}',
        "dataset.rating_min=0.5", "dataset.rating_max=5",
    )  # fmt: skip
    df, n = read_dataset(spark, dataset_spec(cfg))["ratings"]
    assert n == 1
    assert rows(df, "user", "item", "rating", "timestamp") == [("A", "x", "4.5", "10")]
    assert '"who":"A"' in df.first()["raw"]


def test_generic_needs_scale(cfg_factory, tmp_path):
    cfg = cfg_factory("dataset.kind=generic", f'dataset.generic.ratings="{tmp_path}/x"')
    with pytest.raises(ValueError, match="rating_min"):
        dataset_spec(cfg)


# -- file-level problems -----------------------------------------------------
def _latest(tmp_path, cfg_factory, ratings_text):
    root = tmp_path / "ml"
    write(root / "ratings.csv", ratings_text)
    write(root / "movies.csv", "movieId,title,genres\n1,A (1990),Drama\n")
    write(root / "tags.csv", "userId,movieId,tag,timestamp\n")
    cfg = cfg_factory("dataset.kind=ml-latest", f'dataset.path="{root}"')
    return dataset_spec(cfg).files["ratings"]


def test_empty_file(spark, tmp_path, cfg_factory):
    spec = _latest(tmp_path, cfg_factory, "")
    with pytest.raises(DataFormatError, match=r"ratings.csv: is empty \(no lines"):
        parse_file(spark, spec, "ratings")


def test_header_only_file(spark, tmp_path, cfg_factory):
    spec = _latest(tmp_path, cfg_factory, "userId,movieId,rating,timestamp\n")
    with pytest.raises(DataFormatError, match=r"ratings.csv: has a header but no data rows"):
        parse_file(spark, spec, "ratings")


def test_wrong_delimiter(spark, tmp_path, cfg_factory):
    spec = _latest(tmp_path, cfg_factory, "userId\tmovieId\trating\ttimestamp\n1\t1\t4\t5\n")
    with pytest.raises(DataFormatError, match=r"ratings.csv line 1: header .* -- is the delimiter right\?"):
        parse_file(spark, spec, "ratings")


def test_wrong_delimiter_without_header(spark, tmp_path, cfg_factory):
    root = _ml100k(tmp_path, data="1,10,5,881250949\n")
    cfg = cfg_factory("dataset.kind=ml-100k", f'dataset.path="{root}"')
    with pytest.raises(DataFormatError, match=r"u.data line 1: expected 4 fields separated by tab, found 1"):
        parse_file(spark, dataset_spec(cfg).files["ratings"], "ratings")


def test_bad_row_field_count_is_a_reason_not_an_error(spark, tmp_path, cfg_factory):
    spec = _latest(tmp_path, cfg_factory, "userId,movieId,rating,timestamp\n1,1,4,5\n1,2,4\n\n")
    df, n = parse_file(spark, spec, "ratings")
    assert n == 3
    reasons = {r["line_no"]: r["reason"] for r in df.select("line_no", "reason").collect()}
    assert reasons == {2: None, 3: "expected 4 fields separated by ',', found 3", 4: "empty line"}
    assert df.where(F.col("reason").isNotNull()).where(F.col("user").isNotNull()).count() == 0
