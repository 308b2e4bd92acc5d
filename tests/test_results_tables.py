"""The result tables the CLI and the flows share (nepi_prefect.results.tables)."""

from __future__ import annotations

import csv
import json
import math
import statistics

from nepi_prefect.results.tables import (
    artifact_key,
    ci95,
    flat_metrics,
    load_summaries,
    uniform_rows,
    write_csv,
)


def test_ci95_is_twice_the_standard_error():
    samples = [10.0, 12.0, 11.0, 13.0]
    assert ci95(samples) == 2 * statistics.pstdev(samples) / math.sqrt(4)
    assert ci95([5.0, 5.0, 5.0]) == 0.0
    assert ci95([1.0]) == math.inf and ci95([]) == math.inf


def test_flat_metrics_names_each_metric_by_its_resource():
    summary = {"resources": [
        {"guid": 1, "name": "node", "metrics": None},
        {"guid": 2, "name": "ping", "metrics": {"rtt_avg_ms": 0.05, "loss_pct": 0.0}},
        {"guid": 3, "metrics": {"x": 1}},  # unnamed: the guid
    ]}
    assert flat_metrics(summary) == {"ping.rtt_avg_ms": 0.05, "ping.loss_pct": 0.0, "3.x": 1}


def test_uniform_rows_share_columns_in_first_seen_order():
    rows = uniform_rows([{"a": 1, "b": 2}, {"c": 3, "a": 4}])
    assert rows == [{"a": 1, "b": 2, "c": None}, {"a": 4, "b": None, "c": 3}]
    assert [list(r) for r in rows] == [["a", "b", "c"]] * 2
    assert uniform_rows([]) == []


def test_write_csv_creates_the_directory_and_round_trips(tmp_path):
    rows = uniform_rows([{"point": 0, "ping.rtt_avg_ms": 0.5}, {"point": 1, "error": "boom"}])
    path = write_csv(rows, str(tmp_path / "deep" / "dir" / "sweep.csv"))
    with open(path, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert read == [{"point": "0", "ping.rtt_avg_ms": "0.5", "error": ""},
                    {"point": "1", "ping.rtt_avg_ms": "", "error": "boom"}]


def test_artifact_key_is_what_prefect_accepts():
    assert artifact_key("My Ping_test", "sweep") == "nepi-sweep-my-ping-test"
    assert artifact_key(None, "converge") == "nepi-converge-experiment"
    key = artifact_key("x" * 300, "sweep")
    assert len(key) == 100 and set(key) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def test_load_summaries_oldest_first_skipping_unreadable(tmp_path):
    def put(exp, run, body):
        (tmp_path / exp / run).mkdir(parents=True)
        (tmp_path / exp / run / "summary.json").write_text(body)

    put("ping", "2026-01-02", json.dumps({"exp_id": "ping", "run_id": "2026-01-02"}))
    put("ping", "2026-01-01", json.dumps({"exp_id": "ping", "run_id": "2026-01-01",
                                          "run_dir": "/elsewhere"}))
    put("echo", "2026-01-03", json.dumps({"exp_id": "echo", "run_id": "2026-01-03"}))
    put("echo", "2026-01-04", "{not json")
    found = load_summaries(str(tmp_path))
    assert [s["run_id"] for s in found] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert found[0]["run_dir"] == "/elsewhere"
    assert found[1]["run_dir"] == str(tmp_path / "ping" / "2026-01-02")
    assert [s["exp_id"] for s in load_summaries(str(tmp_path), "echo")] == ["echo"]
    assert load_summaries(str(tmp_path / "missing")) == []
