"""The benchmarks are not tests; this keeps them from rotting (no timing checked), and checks
that the GPU proof can be cut short but never hang."""

import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks.run import main


def test_data_pipeline_quick_smoke_run(tmp_path, cli):
    code, stdout, _ = cli(main, ["--quick", "--only", "data_pipeline", "--out", tmp_path])
    assert code == 0 and "machine:" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    measured = results["benchmarks"]["data_pipeline"]
    assert {"ours_images_per_s", "seed_style_images_per_s", "speedup"} <= set(measured)
    ops = measured["ops_per_batch"]
    assert ops["crop_flip_cutout"] < ops["crop_flip_cutout_trivialaugment"] < ops["crop_flip_cutout_randaugment"]


@pytest.mark.slow  # steps under time caps
def test_gpu_proof_smoke_run_reports_every_step(tmp_path, cli):
    from benchmarks.proof import main as proof_main

    code, stdout, _ = cli(proof_main, ["--smoke", "--out", tmp_path])
    assert code == 0 and "proof done" in stdout
    proof = json.loads((tmp_path / "proof.json").read_text())
    steps = proof["steps"]
    assert set(steps) == {"data_pipeline", "training_step", "trial_packing", "accuracy_in_time", "correctness"}
    assert not any("skipped" in result for result in steps.values()), steps  # each step ran
    assert all(result["within_cap"] for result in steps.values()), steps
    assert proof["complete"] and proof["wall_seconds"] < 60
    assert steps["trial_packing"]["trials_2"]["total_images_per_s"] > 0
    # The smoke data has every class in it: a broken evaluation would sit at chance (0.1).
    assert steps["accuracy_in_time"]["test_acc"] > 0.2
    assert "compiled" in steps["training_step"]["toy_b128_bf16_channels_last_compile"]
    checks = steps["correctness"]
    assert checks["resume_exact"]["ok"] and checks["compile_fallback"]["ok"] and checks["bf16_vs_fp32"]["ok"]
    assert "| correctness | resume_exact.ok | True |" in (tmp_path / "proof.md").read_text()
    code, _, err = cli(proof_main, ["--smoke", "--out", tmp_path])  # an earlier proof is not overwritten
    assert code == 2 and "--force" in err


def packed_trial_that_dies(index, *args):
    """The first trial process of every packing round dies before the start barrier."""
    if index == 0:
        os._exit(7)
    from benchmarks.proof import _packed_trial

    _packed_trial(index, *args)


def test_a_packing_child_that_dies_cannot_hang_the_proof(tmp_path, cli, monkeypatch):
    import benchmarks.proof

    monkeypatch.setattr(benchmarks.proof, "_packed_trial", packed_trial_that_dies)
    start = time.time()
    code, _, _ = cli(benchmarks.proof.main, ["--smoke", "--out", tmp_path, "--steps", "accuracy_in_time,trial_packing"])
    assert code == 0 and time.time() - start < 90
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert list(proof["steps"]) == ["trial_packing", "accuracy_in_time"]  # the steps asked, in the proof's order
    packing = proof["steps"]["trial_packing"]
    assert all("died before reporting" in packing[f"trials_{k}"]["skipped"] for k in (1, 2)), packing
    assert proof["complete"] and "test_acc" in proof["steps"]["accuracy_in_time"]  # the proof went on
    assert not benchmarks.harness.CHILDREN


def test_the_proof_ends_at_its_deadline_and_keeps_what_it_measured(tmp_path):
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.proof", "--smoke", "--out", str(tmp_path),
                           "--deadline", "9"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.time() - start < 40
    proof = json.loads((tmp_path / "proof.json").read_text())
    assert proof["deadline_hit"] and not proof["complete"] and proof["running_step"]
    assert "data_pipeline" in proof["steps"]  # the steps done before the deadline are kept
    assert "deadline reached" in proc.stdout


def test_the_simulated_benchmark_drives_the_real_searcher_and_rung_rules():
    from benchmarks.simulated import HORIZON, METHODS, simulate

    runs = {method: simulate(method, 0, max_trials=30) for method in METHODS}
    assert runs["random_fifo"]["epochs"] == 30 * HORIZON  # every trial to the horizon
    assert all(runs[m]["epochs"] < 30 * HORIZON for m in METHODS[1:])  # ASHA stopped some
    assert runs["tpe_asha"]["proposed_by"] == {"startup": 10, "tpe": 20}
    assert any(who.startswith("rung_") for who in runs["rungs_asha"]["proposed_by"])
    pareto = simulate("rungs_asha", 1, max_trials=30, pareto=True)
    assert pareto["finished"] and len({cost for _, cost in pareto["finished"]}) > 1  # the cost varies
