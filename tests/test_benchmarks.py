"""The benchmarks are not tests; this only keeps benchmark 1 from rotting (no timing checked)."""

import json

from benchmarks.run import main


def test_data_pipeline_quick_smoke_run(tmp_path, cli):
    code, stdout, _ = cli(main, ["--quick", "--only", "data_pipeline", "--out", tmp_path])
    assert code == 0 and "machine:" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    measured = results["benchmarks"]["data_pipeline"]
    assert {"ours_images_per_s", "seed_style_images_per_s", "speedup"} <= set(measured)


def test_gpu_proof_smoke_run_reports_every_step(tmp_path, cli):
    from benchmarks.proof import main as proof_main

    code, stdout, _ = cli(proof_main, ["--smoke", "--out", tmp_path])
    assert code == 0 and "proof done" in stdout
    proof = json.loads((tmp_path / "proof.json").read_text())
    steps = proof["steps"]
    assert set(steps) == {"data_pipeline", "training_step", "trial_packing", "accuracy_in_time", "correctness"}
    assert not any("skipped" in result for result in steps.values()), steps  # each step ran
    assert steps["trial_packing"]["trials_2"]["total_images_per_s"] > 0
    checks = steps["correctness"]
    assert checks["resume_exact"]["ok"] and checks["compile_fallback"]["ok"] and checks["bf16_vs_fp32"]["ok"]
    assert "| correctness | resume_exact.ok | True |" in (tmp_path / "proof.md").read_text()
    code, _, err = cli(proof_main, ["--smoke", "--out", tmp_path])  # an earlier proof is not overwritten
    assert code == 2 and "--force" in err
