"""The benchmarks are not tests; this only keeps benchmark 1 from rotting (no timing checked)."""

import json

from benchmarks.run import main


def test_data_pipeline_quick_smoke_run(tmp_path, cli):
    code, stdout, _ = cli(main, ["--quick", "--only", "data_pipeline", "--out", tmp_path])
    assert code == 0 and "machine:" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    measured = results["benchmarks"]["data_pipeline"]
    assert {"ours_images_per_s", "seed_style_images_per_s", "speedup"} <= set(measured)
