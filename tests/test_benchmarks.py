"""A smoke run of the benchmark script on the tiny configuration (timings are not checked)."""

import re

from benchmarks.run import METRICS, main


def test_benchmark_smoke_run_prints_a_table(tmp_path):
    report = main(["--size", "tiny", "--dtypes", "float32", "--reps", "1", "--repeats", "1",
                   "--new-tokens", "2", "--cache", str(tmp_path)])
    rows = [line for line in report.splitlines() if line.startswith("| float32 |")]
    assert [row.split("|")[2].strip() for row in rows] == [label for _, label in METRICS]
    for row in rows:
        ours, ref, ratio = (float(cell) for cell in row.split("|")[3:6])
        assert ours > 0 and ref > 0
        assert abs(ratio - ours / ref) <= 0.01 * ours / ref + 0.006
    assert re.search(r"Machine: .+ cores", report)
    serving = [line for line in report.splitlines() if line.startswith("| float32: ")]
    assert [row.split("|")[1].split(":")[1].strip() for row in serving] == ["time to first token (s)",
                                                                            "throughput (tokens/s)"]
    for row in serving:
        base, ours, ratio = (float(cell) for cell in row.split("|")[2:5])
        assert base > 0 and ours > 0
        assert abs(ratio - ours / base) <= 0.01 * ours / base + 0.006
        assert re.fullmatch(r" (<= 0\.3|>= 2\.5) (met|NOT met) ", row.split("|")[5])
