"""Real-layout loaders, entity handling, bad-input errors, and download/verify/extract."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from madcluster_exp.app import run
from madcluster_exp.data import DataError, load_dataset, prepare
from madcluster_exp.data.download import DatasetSource, SourceFile, download, prepare_from
from madcluster_exp.data.registry import DatasetMissingError
from tests.conftest import compose_config
from tests.dataset_fixtures import (
    FixtureServer,
    make_psm,
    make_smd,
    make_telemanom,
    make_timeeval,
    malicious_zip,
    zip_tree,
)


def _cfg(name, **kw):
    cfg = compose_config(
        [f"dataset={name}"] + ([f"dataset.path={kw.pop('path')}"] if "path" in kw else [])
    )
    for k, v in kw.items():
        OmegaConf.update(cfg, f"dataset.{k}", v, merge=False)
    return cfg.dataset


def _load_all(cfg, data_dir):
    raw = load_dataset(cfg, data_dir)
    raw.test.unseal()
    return raw, raw.test.get()


# ------------------------------------------------------------------------------- loaders
def test_smd_keeps_the_first_row_and_orders_machines_naturally(tmp_path):
    written = make_smd(tmp_path / "SMD", machines=("machine-1-10", "machine-1-2", "machine-1-1"))
    raw, test = _load_all(_cfg("SMD"), tmp_path)
    assert raw.entities == ["machine-1-1", "machine-1-2", "machine-1-10"]
    assert raw.n_channels == 38 and len(raw.train) == 3 * 300
    first = raw.train.entity("machine-1-1").values
    np.testing.assert_allclose(first[0], written["train/machine-1-1"][0], atol=1e-6)  # row 0 kept
    assert len(first) == 300
    np.testing.assert_array_equal(
        test.entity("machine-1-2").labels, written["test_label/machine-1-2"]
    )


def test_entity_selection_and_unknown_entity(tmp_path):
    make_smd(tmp_path / "SMD")
    raw = load_dataset(_cfg("SMD", entities=["machine-2-1"]), tmp_path)
    assert raw.entities == ["machine-2-1"]
    with pytest.raises(DataError, match=r"machine-9-9.*available"):
        load_dataset(_cfg("SMD", entities=["machine-9-9"]), tmp_path)


def test_msl_and_smap_share_the_telemanom_layout(tmp_path):
    make_telemanom(tmp_path / "MSL")
    raw, test = _load_all(_cfg("MSL"), tmp_path)
    assert raw.entities == ["C-2", "M-1", "T-10"] and raw.n_channels == 55
    labels = test.entity("M-1").labels
    assert labels[50:60].all() and labels[200:220].all() and labels.sum() == 30  # inclusive ends
    make_telemanom(tmp_path / "SMAP")
    raw = load_dataset(_cfg("SMAP", exclude=["E-3"]), tmp_path)
    assert raw.entities == ["P-1"] and raw.n_channels == 25


def test_psm_drops_the_timestamp_and_fills_missing_cells_only_when_asked(tmp_path):
    make_psm(tmp_path / "PSM", nan_at=(5, 3))
    raw, test = _load_all(_cfg("PSM"), tmp_path)
    assert raw.n_channels == 25 and len(raw.train) == 400 and len(test) == 300
    assert raw.train.values[5, 3] == 0.0 and test.labels.sum() == 20
    with pytest.raises(DataError, match=r"train.csv: line 7, column 'feature_3'.*nan_policy=zero"):
        load_dataset(_cfg("PSM", nan_policy="error"), tmp_path)


def test_timeeval_csv_two_files_one_file_and_univariate(tmp_path):
    make_timeeval(tmp_path / "train.csv", seed=1)
    x, y = make_timeeval(tmp_path / "test.csv", seed=2)
    raw, test = _load_all(
        _cfg("csv", path=str(tmp_path / "test.csv"), train_path=str(tmp_path / "train.csv")),
        tmp_path,
    )
    assert raw.n_channels == 2 and len(raw.train) == 400
    np.testing.assert_array_equal(test.labels, y)
    make_timeeval(tmp_path / "uni.csv", channels=1)
    raw, test = _load_all(
        _cfg("csv", path=str(tmp_path / "uni.csv"), train_fraction=0.25), tmp_path
    )
    assert raw.n_channels == 1 and len(raw.train) == 100 and len(test) == 300


# ------------------------------------------------------------------------------ bad input
def _smd_with(tmp_path, split, machine, edit):
    make_smd(tmp_path / "SMD", machines=("machine-1-1",))
    path = tmp_path / "SMD" / split / f"{machine}.txt"
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "split,edit,match",
    [
        (
            "train",
            lambda l: l.__setitem__(4, l[4].replace(l[4].split(",")[2], "nan", 1)),
            r"train/machine-1-1.txt: line 5, column 2: nan",
        ),
        (
            "train",
            lambda l: l.__setitem__(9, l[9].replace(l[9].split(",")[0], "inf", 1)),
            r"line 10, column 0: inf",
        ),
        (
            "test",
            lambda l: l.__setitem__(6, l[6] + ",1.0"),
            r"test/machine-1-1.txt: line 7 has 39 fields, expected 38",
        ),
        (
            "train",
            lambda l: l.__setitem__(2, l[2].replace(l[2].split(",")[5], "abc", 1)),
            r"line 3, column 5: 'abc' is not a number",
        ),
        ("test_label", lambda l: l.pop(), r"299 labels for 300 test rows"),
        ("test_label", lambda l: l.__setitem__(3, "2"), r"row 4: label 2\b.*expected 0 or 1"),
    ],
)
def test_bad_input_names_file_row_and_problem(tmp_path, split, edit, match):
    _smd_with(tmp_path, split, "machine-1-1", edit)
    with pytest.raises(DataError, match=match):
        _load_all(_cfg("SMD"), tmp_path)


def test_feature_count_mismatch_between_train_and_test(tmp_path):
    make_smd(tmp_path / "SMD", machines=("machine-1-1",))
    x = np.loadtxt(tmp_path / "SMD" / "test" / "machine-1-1.txt", delimiter=",")
    np.savetxt(tmp_path / "SMD" / "test" / "machine-1-1.txt", x[:, :37], delimiter=",")
    raw = load_dataset(_cfg("SMD"), tmp_path)
    data = prepare(raw, 20, 0.2, "standard")
    data.test.unseal()
    with pytest.raises(DataError, match="37 features in test but 38 in train"):
        data.test.get()


def test_series_shorter_than_a_window_and_empty_split(tmp_path):
    make_smd(tmp_path / "SMD", machines=("machine-1-1",), n_train=300, n_test=30)
    data = prepare(load_dataset(_cfg("SMD"), tmp_path), 50, 0.2, "standard")
    data.test.unseal()
    with pytest.raises(DataError, match="30 rows is shorter than one window \\(50\\)"):
        data.test.get()
    (tmp_path / "SMD" / "train" / "machine-1-1.txt").write_text("")
    with pytest.raises(DataError, match="machine-1-1.txt: empty file"):
        load_dataset(_cfg("SMD"), tmp_path)


def test_missing_dataset_says_where_it_looked_and_how_to_fetch(tmp_path):
    with pytest.raises(DatasetMissingError) as err:
        load_dataset(_cfg("MSL"), tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MSL" / "labeled_anomalies.csv") in msg
    assert "python -m madcluster_exp.data download MSL" in msg and "make data DATASET=MSL" in msg


@pytest.mark.parametrize("name", ["SMD", "MSL"])
def test_a_wrong_explicit_dataset_path_says_the_path_is_wrong(tmp_path, name):
    for given, problem in [
        (tmp_path / "typo", "no such folder"),
        (tmp_path, f"the folder holds no {name} files in the published layout: looked for"),
    ]:
        with pytest.raises(DatasetMissingError) as err:
            load_dataset(_cfg(name, path=str(given)), tmp_path / "datasets")
        msg = str(err.value)
        assert msg.startswith(f"dataset.path={str(given)!r} (resolved to {given}): {problem}")
        assert "Check the path" in msg and "download" not in msg


# ------------------------------------------------------------------------ per-entity runs
def test_per_entity_mode_trains_one_model_per_entity_and_pools(make_cfg, tmp_path):
    make_smd(tmp_path / "data" / "SMD")
    cfg = make_cfg(
        "dataset=SMD",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.mode=per_entity",
        "backbone.window=20",
        fast=False,
    )
    OmegaConf.update(cfg, "train", {"epochs": 1, "patience": None, "progress": "none"})
    OmegaConf.update(cfg, "tracking.plots", False)
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    import pandas as pd

    table = pd.read_csv(result.output_dir / "per_entity.csv")
    assert table["entity"].tolist() == ["machine-1-1", "machine-1-2", "machine-2-1"]
    assert result.metrics["test/auc_roc_entity_mean"] == pytest.approx(table["test/auc_roc"].mean())
    saved = np.load(result.output_dir / "scores.npz")
    assert saved["test_score"].shape == (900,)
    from madcluster_exp.metrics import auc_roc

    assert result.metrics["test/auc_roc"] == pytest.approx(
        auc_roc(y_true=saved["test_label"], y_score=saved["test_score"])
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    assert client.get_metric_history(result.run_id, "machine-1-2/train/loss")
    assert "per_entity.csv" in {a.path for a in client.list_artifacts(result.run_id)}


# ---------------------------------------------------------------------- download & install
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _smd_source(url: str, sha: str, name="OmniAnomaly-master.zip") -> dict:
    return {
        "SMD": DatasetSource(
            "SMD",
            [
                SourceFile(
                    url=f"{url}/{name}",
                    name=name,
                    sha256=sha,
                    archive="zip",
                    strip="OmniAnomaly-master/ServerMachineDataset/",
                    include=["train/", "test/", "test_label/"],
                )
            ],
            ["train/machine-*.txt", "test/machine-*.txt", "test_label/machine-*.txt"],
        )
    }


@pytest.fixture
def served(tmp_path):
    src = tmp_path / "src"
    make_smd(src, machines=("machine-1-1", "machine-3-2"))
    (src / "README").write_text("not data")
    www = tmp_path / "www"
    www.mkdir()
    archive = zip_tree(src, "OmniAnomaly-master/ServerMachineDataset/")
    (www / "OmniAnomaly-master.zip").write_bytes(archive)
    (www / "evil.zip").write_bytes(
        malicious_zip(["OmniAnomaly-master/ServerMachineDataset/../../evil.txt"])
    )
    (www / "abs.zip").write_bytes(malicious_zip(["/tmp/madcluster-absolute-evil.txt"]))
    return www, _sha(archive)


def test_download_verifies_and_installs_atomically(tmp_path, served):
    www, sha = served
    with FixtureServer(www) as server:
        final = download("SMD", tmp_path / "datasets", _smd_source(server.url, sha))
    assert (final / ".complete.json").exists()
    assert sorted(p.name for p in (final / "train").iterdir()) == [
        "machine-1-1.txt",
        "machine-3-2.txt",
    ]
    assert not (final / "README").exists()  # only the published layout is kept
    raw = load_dataset(_cfg("SMD"), tmp_path / "datasets")
    assert raw.entities == ["machine-1-1", "machine-3-2"]
    assert not list((tmp_path / "datasets").glob(".tmp-*"))


def test_corrupt_download_is_deleted_and_nothing_is_installed(tmp_path, served):
    www, sha = served
    with FixtureServer(www) as server:
        with pytest.raises(DataError, match="does not match the expected"):
            download("SMD", tmp_path / "datasets", _smd_source(server.url, "0" * 64))
    assert not (tmp_path / "datasets" / "SMD").exists()
    assert not (tmp_path / "datasets" / ".downloads" / "SMD" / "OmniAnomaly-master.zip").exists()
    with pytest.raises(DatasetMissingError):
        load_dataset(_cfg("SMD"), tmp_path / "datasets")


@pytest.mark.parametrize("archive", ["evil.zip", "abs.zip"])
def test_malicious_archive_members_are_refused(tmp_path, served, archive):
    www, _ = served
    sha = _sha((www / archive).read_bytes())
    with FixtureServer(www) as server:
        with pytest.raises(DataError, match="refusing archive member .* would escape"):
            download("SMD", tmp_path / "datasets", _smd_source(server.url, sha, archive))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "datasets" / "SMD").exists()
    assert not Path("/tmp/madcluster-absolute-evil.txt").exists()
    assert not list((tmp_path / "datasets").glob(".tmp-*"))


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, served):
    www, sha = served
    with FixtureServer(www) as server:
        server.drop_after["/OmniAnomaly-master.zip"] = 1000
        download("SMD", tmp_path / "datasets", _smd_source(server.url, sha))
        assert server.requests[0] == ("/OmniAnomaly-master.zip", None)
        assert server.requests[1] == ("/OmniAnomaly-master.zip", "bytes=1000-")
    assert (tmp_path / "datasets" / "SMD" / ".complete.json").exists()


def test_without_range_support_the_transfer_restarts_cleanly(tmp_path, served):
    www, sha = served
    cache = tmp_path / "datasets" / ".downloads" / "SMD"
    cache.mkdir(parents=True)
    (cache / "OmniAnomaly-master.zip.part").write_bytes(b"garbage from an old attempt")
    with FixtureServer(www, ranges=False) as server:
        download("SMD", tmp_path / "datasets", _smd_source(server.url, sha))
    assert (tmp_path / "datasets" / "SMD" / ".complete.json").exists()


def test_offline_download_says_the_network_is_unreachable_and_names_prepare(tmp_path, capsys):
    from madcluster_exp.data.__main__ import main
    from tests.conftest import free_port

    port = free_port()  # nothing listens there: every connection is refused
    source = _smd_source(f"http://127.0.0.1:{port}", "0" * 64)
    with pytest.raises(DataError) as err:
        download("SMD", tmp_path / "datasets", source)
    msg = str(err.value)
    assert msg.startswith(f"downloading SMD: cannot reach 127.0.0.1:{port} (")
    assert "the network is unreachable from here, or the server is down" in msg
    assert "python -m madcluster_exp.data prepare SMD --from <folder holding " in msg
    assert "resuming" not in msg and "bytes" not in msg
    assert "interrupted" not in capsys.readouterr().err
    assert not (tmp_path / "datasets" / "SMD").exists()
    spec = tmp_path / "sources.json"
    spec.write_text(
        json.dumps(
            {
                "SMD": {
                    "files": [vars(f) for f in source["SMD"].files],
                    "expect": source["SMD"].expect,
                }
            }
        )
    )
    code = main(["--data-dir", str(tmp_path / "d"), "--sources", str(spec), "download", "SMD"])
    stderr = capsys.readouterr().err
    assert code == 2 and "error: downloading SMD: cannot reach 127.0.0.1" in stderr
    assert "python -m madcluster_exp.data prepare SMD --from" in stderr


def test_prepare_from_files_downloaded_by_hand(tmp_path, served):
    www, sha = served
    final = prepare_from("SMD", www, tmp_path / "datasets", _smd_source("http://unused", sha))
    assert (final / "test_label" / "machine-3-2.txt").exists()
    with pytest.raises(DataError, match="OmniAnomaly-master.zip not found"):
        prepare_from("SMD", tmp_path, tmp_path / "d2", _smd_source("http://unused", sha))


def test_cli_download_with_a_sources_file(tmp_path, served):
    www, sha = served
    with FixtureServer(www) as server:
        spec = {
            "SMD": {
                "files": [
                    {
                        "url": f"{server.url}/OmniAnomaly-master.zip",
                        "name": "OmniAnomaly-master.zip",
                        "sha256": sha,
                        "archive": "zip",
                        "strip": "OmniAnomaly-master/ServerMachineDataset/",
                        "include": ["train/", "test/", "test_label/"],
                    }
                ],
                "expect": ["train/machine-*.txt"],
            }
        }
        (tmp_path / "sources.json").write_text(json.dumps(spec))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "madcluster_exp.data",
                "--data-dir",
                str(tmp_path / "d"),
                "--sources",
                str(tmp_path / "sources.json"),
                "download",
                "SMD",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0, out.stderr
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp.data",
            "--data-dir",
            str(tmp_path / "d"),
            "--sources",
            str(tmp_path / "sources.json"),
            "list",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SMD    installed" in listing.stdout


def test_unknown_checksum_is_recorded_not_trusted_silently(tmp_path, served):
    www, _ = served
    with FixtureServer(www) as server:
        download("SMD", tmp_path / "datasets", _smd_source(server.url, None))
    recorded = json.loads(
        (tmp_path / "datasets" / ".downloads" / "SMD" / "recorded_checksums.json").read_text()
    )
    assert list(recorded.values()) == [_sha((www / "OmniAnomaly-master.zip").read_bytes())]


def test_sources_file_describes_every_benchmark():
    from madcluster_exp.data.download import load_sources

    assert set(load_sources()) == {"SMD", "MSL", "SMAP", "PSM"}


def test_tar_archives_are_extracted_and_links_refused(tmp_path):
    import tarfile

    from madcluster_exp.data.download import extract

    src = tmp_path / "src"
    make_psm(src)
    good = tmp_path / "psm.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        for f in sorted(src.iterdir()):
            tf.add(f, arcname=f"RANSynCoders-main/data/{f.name}")
    spec = SourceFile(url="x", name="psm.tar.gz", archive="tar", strip="RANSynCoders-main/data/")
    assert extract(good, spec, tmp_path / "out") == 3
    assert (tmp_path / "out" / "test_label.csv").exists()
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tf:
        link = tarfile.TarInfo("RANSynCoders-main/data/train.csv")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="a link or device"):
        extract(bad, SourceFile(url="x", name="bad.tar", archive="tar"), tmp_path / "out2")
