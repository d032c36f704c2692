"""A smoke run of the benchmark script on the tiny configuration (timings are not checked)."""

import re

import pytest

from benchmarks.run import METRICS, cpu_features, machine, main, serving_table


def check_comparison_rows(report: str, prefix: str) -> None:
    """The rows starting with ``prefix`` name every metric once, with positive times and ratio = ours / ref.

    The end-to-end difference of decode times may be negative on a tiny checkpoint (a step costs less
    than the noise between two timed calls), so only its ratio is checked there."""
    rows = [line for line in report.splitlines() if line.startswith(prefix)]
    assert [row.split("|")[2].strip() for row in rows] == [label for _, label in METRICS]
    difference = dict(METRICS)["decode_diff_ms_per_token"]
    for row in rows:
        ours, ref, ratio = (float(cell) for cell in row.split("|")[3:6])
        if row.split("|")[2].strip() != difference:
            assert ours > 0 and ref > 0
        assert abs(ratio - ours / ref) <= 0.01 * abs(ours / ref) + 0.006


def test_benchmark_smoke_run_prints_a_table(tmp_path):
    report = main(["--size", "tiny", "--dtypes", "float32", "--reps", "1", "--repeats", "1",
                   "--new-tokens", "2", "--cache", str(tmp_path)])
    check_comparison_rows(report, "| float32 |")
    assert re.search(r"Machine: .+ cores", report)
    serving = [line for line in report.splitlines() if line.startswith("| float32: ")]
    assert [row.split("|")[1].split(":")[1].strip() for row in serving] == [
        "time to first token (s)", "throughput (tokens/s)", "decode (ms/token) a user sees"]
    for row in serving:
        base, ours, ratio = (float(cell) for cell in row.split("|")[2:5])
        assert base > 0 and ours > 0
        assert abs(ratio - ours / base) <= 0.01 * ours / base + 0.006
        assert row.split("|")[5] in (" n/a (tiny checkpoint) ", " (none) ")


def test_serving_targets_are_judged_on_the_ratio():
    def run(cold, cached, one, batched):
        return {"ttft_cold_s": cold, "ttft_cached_s": cached, "one_at_a_time_tokens_per_s": one,
                "concurrent_tokens_per_s": batched, "alone_ms_per_token": 200.0, "batched_ms_per_token": 300.0}

    table = serving_table({"float32": [run(2.0, 0.4, 4.0, 9.0)], "bfloat16": [run(1.0, 0.5, 4.0, 8.0)]}, 4)
    verdicts = [row.split("|")[4:6] for row in table.splitlines()[2:]]
    assert verdicts == [[" 0.20 ", " <= 0.3 met "], [" 2.25 ", " >= 2.5 NOT met "], [" 1.50 ", " (none) "],
                        [" 0.50 ", " <= 0.3 NOT met "], [" 2.00 ", " >= 2.5 NOT met "], [" 1.50 ", " (none) "]]


@pytest.mark.parametrize("flags, want", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_tile"}, "AVX-512, AVX-512-BF16, AMX"),
    ({"avx2", "avx512f"}, "AVX-512"), ({"avx2", "fma"}, "AVX2 only"), ({"sse4_2"}, "no AVX2"),
])
def test_machine_line_names_the_cpu_features_that_decide_kernels(flags, want):
    assert cpu_features(flags) == want


def test_machine_line_names_mkls_reproducibility_mode(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2,STRICT")
    assert ", MKL_CBWR=AVX2,STRICT, " in machine()
    monkeypatch.delenv("MKL_CBWR")
    assert ", MKL_CBWR=unset, " in machine()


def test_benchmark_int8_mode_rows_and_agreement(tmp_path):
    # the bfloat16 comparison's reference runs are reused for the int8 rows (three workers in all)
    report = main(["--size", "tiny", "--dtypes", "bfloat16", "--reps", "1", "--repeats", "1", "--new-tokens", "2",
                   "--cache", str(tmp_path), "--modes", "int8", "--serving", "skip"])
    check_comparison_rows(report, "| int8 vs reference bfloat16 |")
    share = re.search(r"int8 agreement with float32 \(greedy, tiny random checkpoints\): ([\d.]+)% of (\d+) tokens",
                      report)
    assert share and 0 <= float(share.group(1)) <= 100 and int(share.group(2)) == 3 * 3 * 24


def test_benchmark_rejects_an_unknown_mode(tmp_path):
    with pytest.raises(SystemExit):
        main(["--size", "tiny", "--dtypes", "float32", "--reps", "1", "--cache", str(tmp_path), "--modes", "int4",
              "--serving", "skip"])
