"""Pareto mode: the sorting and promotion rule against hand-worked cases, exact MACs,
latency measured once per architecture, MO-ASHA across a resume, and multi-objective TPE."""

import json
import random

import optuna
import pytest
import torch

from conftest import kill_when, ray_trial, result_stream
from search.pareto import (crowding_distances, dominates, front_indices, hypervolume, knee, nondominated_ranks,
                           pareto_order, promote)
from search.tune.rungs import ParetoRungScheduler, RungScheduler, judge
from search.records import load_study, read_trials


# ----------------------------------------------------------------------------- the arithmetic
def _ranks_by_definition(points):
    """Fronts peeled one at a time, straight from the definition of dominance."""
    ranks, left, front = [None] * len(points), set(range(len(points))), 0
    while left:
        current = {i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)}
        for i in current:
            ranks[i] = front
        left -= current
        front += 1
    return ranks


def test_nondominated_sorting_of_hand_worked_points():
    # (val_acc, -params in M): A and B trade off; C is beaten by A only; D by everyone above.
    points = {"A": (0.90, -4.0), "B": (0.80, -1.0), "C": (0.85, -4.5), "D": (0.70, -5.0), "E": (0.80, -1.0)}
    ranks = dict(zip(points, nondominated_ranks(list(points.values()))))
    assert ranks == {"A": 0, "B": 0, "E": 0, "C": 1, "D": 2}  # B and E are equal: neither dominates
    assert front_indices(list(points.values())) == [0, 1, 4]


def test_the_fast_2d_sort_agrees_with_the_definition():
    rng = random.Random(7)
    for _ in range(500):
        # Few distinct values, so ties on one or both coordinates are common.
        points = [(rng.choice([0.1, 0.2, 0.3, rng.random()]), -rng.choice([1.0, 2.0, rng.random() * 3]))
                  for _ in range(rng.randint(1, 25))]
        assert nondominated_ranks(points) == _ranks_by_definition(points), points


def test_crowding_and_order_of_a_hand_worked_front():
    front = [(0.9, -4.0), (0.8, -1.0), (0.85, -2.0), (0.88, -3.0)]
    # Inner points: (0.88 - 0.80) / 0.1 + (-1 - -3) / 3 and (0.90 - 0.85) / 0.1 + (-2 - -4) / 3.
    assert crowding_distances(front)[2:] == pytest.approx([0.8 + 2 / 3, 0.5 + 2 / 3])
    # A dominated point goes last whatever its crowding; the ends first, then the sparser.
    assert pareto_order([(0.7, -3.0)] + front) == [1, 2, 3, 4, 0]


def test_promotion_keeps_the_top_third_of_a_rung_by_front_then_crowding():
    rung = {"a": (0.90, -4.0), "b": (0.80, -1.0), "c": (0.70, -3.0)}  # c is dominated by b
    # Four at the rung with the newcomer: ceil(4 / 3) = 2 go on.
    assert promote(rung, "d", (0.95, -5.0), 3)  # the most accurate: an end of the front
    assert promote(rung, "d", (0.60, -0.5), 3)  # the smallest: the other end
    assert not promote(rung, "d", (0.85, -2.0), 3)  # on the front, but between its two ends
    assert not promote(rung, "d", (0.60, -5.0), 3)  # dominated by a
    assert promote(rung, "d", (0.85, -2.0), 1)  # reduction factor 1 keeps everyone
    assert promote({}, "first", (0.1, -9.0), 3)  # the first at a rung always goes on


def test_with_one_objective_promotion_is_ashas_rule_up_to_its_interpolation():
    """ASHA cuts at an interpolated quantile of the values recorded; the Pareto rule keeps the
    top ceil(n / rf) by rank. Where the quantile falls on a recorded value they agree
    exactly; elsewhere they can differ only for a value between the two around the cut."""
    import numpy as np

    rng = random.Random(3)
    exact = 0
    for _ in range(1000):
        factor = rng.choice([2, 3, 4])
        values = [rng.random() for _ in range(rng.randint(0, 12))]
        value = rng.random()
        ours = promote({f"t{i}": (v,) for i, v in enumerate(values)}, "new", (value,), factor)
        theirs = judge({f"t{i}": v for i, v in enumerate(values)}, value, factor)
        position = (len(values) - 1) * (1 - 1 / factor)
        if not values or position == int(position):
            assert ours == theirs, (values, value, factor)
            exact += 1
        elif ours != theirs:
            ordered = sorted(values)
            assert ordered[int(np.floor(position))] < value < ordered[int(np.ceil(position))]
    assert exact > 200


def test_knee_and_hypervolume_by_hand():
    # Scaled to [0, 1]: (0, 0), (0.909, 0.143), (1, 1); the middle one is far above the chord.
    assert knee([(0.80, 1.0), (0.90, 2.0), (0.91, 8.0)]) == 1
    assert knee([]) is None
    # 0.8 x 3/4 + (0.9 - 0.8) x 2/4; the dominated (0.7, 3) and the (0.99, 5) past the reference add nothing.
    assert hypervolume([(0.8, 1.0), (0.9, 2.0), (0.7, 3.0), (0.99, 5.0)], 4.0) == pytest.approx(0.65)


# ----------------------------------------------------------------------------- the costs
def test_macs_are_the_sum_over_every_conv_and_linear_layer():
    """FlopCounterMode's count against an independent one: forward hooks on the real model."""
    from trainable.cost import count_macs
    from trainable.model import build_model

    for config, size in (({"blocks": [1, 2], "widths": [8, 16], "skip_kernel_size": 3}, 16),
                         ({"blocks": [2, 1, 1], "widths": [8, 16, 24], "block": "shake"}, 32),
                         ({"blocks": [1, 1], "widths": [16, 32], "kernel_size": 5, "block": "preact"}, 24)):
        model = build_model(config).eval()
        macs = []

        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
                macs.append(output.numel() * k)
            elif isinstance(module, torch.nn.Linear):
                macs.append(output.numel() * module.in_features)

        for module in model.modules():
            module.register_forward_hook(hook)
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
        assert count_macs(config, 10, size) == sum(macs), config


def test_latency_is_a_median_with_its_spread():
    from trainable.cost import measure_latency

    record = measure_latency({"blocks": [1], "widths": [8]}, 10, "cpu", image_size=16, repeats=7, warmup=1,
                             batches=(1, 8))
    assert record["device"] == "cpu" and record["batch1_runs"] == record["batch8_runs"] == 7
    assert 0 < record["batch1_ms"] < record["batch8_ms"] and record["batch8_iqr_ms"] >= 0


def test_latency_is_measured_once_per_architecture_and_kept(ray_session, tmp_path):
    from search.tune.costs import Costs, Probe

    probe = Probe("cpu", {"num_cpus": 1})
    costs = Costs(tmp_path, 10, 16, "latency", probe)
    a = {"blocks": [1], "widths": [8], "lr": 0.1}
    same_model = {**a, "lr": 0.01, "batch_size": 16}  # training keys do not change the model
    costs.request_latency(a)
    costs.request_latency(same_model)
    assert len(costs.pending) == 1
    first = costs.latency(a)
    assert first["isolated"] is True and costs.latency(same_model) == first
    assert costs.value(same_model) == first["batch1_ms"]
    assert costs.figures(a) == {**costs.counts(a), "latency_ms": first["batch1_ms"]}
    # A resumed search reads latency.json and measures nothing again.
    again = Costs(tmp_path, 10, 16, "latency", probe)
    again.request_latency(a)
    assert not again.pending and again.latency(a) == first
    assert len(json.loads((tmp_path / "latency.json").read_text())) == 1


def test_the_latency_probe_gets_a_slot_of_its_own_where_one_can_be_spared():
    from search.settings import SearchSettings
    from search.tune.resources import resources_for

    latency = SearchSettings(minimize="latency", gpus_per_trial=0.25)
    on_four = resources_for(latency, 4, 16)
    assert on_four.probe.isolated and on_four.probe.resources["num_gpus"] == 1 and on_four.concurrent == 12
    on_one = resources_for(latency, 1, 16)
    assert not on_one.probe.isolated and on_one.concurrent == 4  # nothing to spare: it shares, and says so
    cpu = resources_for(latency, 0, 4)
    assert cpu.probe.isolated and cpu.probe.resources == {"num_cpus": 1} and cpu.concurrent == 3
    assert resources_for(SearchSettings(minimize="params"), 0, 4).probe is None


# ----------------------------------------------------------------------------- MO-ASHA
def _config(width):
    return {"blocks": [1], "widths": [width]}


def _trial(trial_id, width, continues=None):
    return ray_trial(trial_id, _config(width), continues)


def test_mo_asha_promotes_by_front_at_each_rung():
    cost = {8: 1.0, 16: 2.0, 32: 4.0}
    pareto = ParetoRungScheduler(4, 1, 2, cost=lambda c: cost[c["widths"][0]])
    asha = RungScheduler(4, 1, 2)
    steps = [  # (trial, width, epoch, val_acc, MO-ASHA's decision), worked by hand with ceil(n / 2) kept
        ("a", 32, 1, 0.60, "CONTINUE"),  # the first at rung 1
        ("b", 16, 1, 0.20, "STOP"),  # 1 of 2 goes on; both on the front, the earlier keeps the tie
        ("c", 8, 1, 0.50, "CONTINUE"),  # dominates b; with a, the two ends of the front
        ("d", 16, 1, 0.55, "STOP"),  # on the front between its ends: 2 of 4 go on (ASHA would keep it)
        ("e", 8, 1, 0.58, "CONTINUE"),  # dominates c and d: the front is a and e
        ("a", 32, 2, 0.65, "CONTINUE"),  # the first at rung 2
        ("c", 8, 2, 0.52, "STOP"),  # 1 of 2; a came first
        ("e", 8, 2, 0.66, "CONTINUE"),  # dominates both: alone on the front
        ("e", 8, 4, 0.70, "STOP"),  # the horizon: finished
    ]
    for trial_id, width, epoch, acc, expected in steps:
        result = {"epoch": epoch, "val_acc": acc}
        assert pareto.on_trial_result(None, _trial(trial_id, width), result) == expected, (trial_id, epoch)
    assert pareto.rungs[0][1]["d"] == (0.55, -2.0)  # what a rung records: (val_acc, -cost)
    asha_decisions = {t: asha.on_trial_result(None, _trial(t, w), {"epoch": e, "val_acc": v})
                      for t, w, e, v, _ in steps[:5]}
    assert asha_decisions["d"] == "CONTINUE"  # by accuracy alone d goes on: the rules really differ


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mo_asha_after_a_resume_decides_as_an_uninterrupted_run(seed):
    """The rung records rebuilt from history.csv and trials.csv's configs are the ones the
    stopped driver held: every later decision is the uninterrupted run's."""
    def scheduler():
        return ParetoRungScheduler(9, 1, 3, cost=lambda c: float(c["widths"][0] ** 2))

    stream = result_stream(seed)
    whole, expected, stopped = scheduler(), [], set()
    for trial_id, width, epoch, acc in stream:
        if trial_id not in stopped:
            expected.append(whole.on_trial_result(None, _trial(trial_id, width), {"epoch": epoch, "val_acc": acc}))
            stopped |= {trial_id} if expected[-1] == "STOP" else set()
    half = len(stream) // 2
    first, decisions, history, configs, stopped = scheduler(), [], [], {}, set()
    for trial_id, width, epoch, acc in stream[:half]:
        if trial_id not in stopped:
            decisions.append(first.on_trial_result(None, _trial(trial_id, width), {"epoch": epoch, "val_acc": acc}))
            history.append({"trial_id": trial_id, "epoch": epoch, "val_acc": acc, "status": "ok"})
            configs[trial_id] = _config(width)
            stopped |= {trial_id} if decisions[-1] == "STOP" else set()
    second = scheduler().from_history(history, configs)
    assert second.rungs == first.rungs
    for trial_id, width, epoch, acc in stream[half:]:
        if trial_id not in stopped:
            decisions.append(second.on_trial_result(None, _trial("new-" + trial_id, width, continues=trial_id),
                                                    {"epoch": epoch, "val_acc": acc}))
            stopped |= {trial_id} if decisions[-1] == "STOP" else set()
    assert decisions == expected
    assert expected.count("STOP") >= 5  # the stream really exercised the rungs


# ----------------------------------------------------------------------------- the study
def test_a_multi_objective_study_keeps_every_epoch_and_prunes_the_stopped():
    from search.tune.costs import Costs
    from search.tune.searcher import BudgetedOptunaSearch
    from search.tune.space import space_v1
    from search.tune.sampler import LaunchedStartup

    storage = optuna.storages.InMemoryStorage()
    sampler = LaunchedStartup(optuna.samplers.TPESampler(seed=0, n_startup_trials=0), 2, seed=0)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"], sampler=sampler)
    costs = Costs("/nonexistent", 10, 32, "params")
    searcher = BudgetedOptunaSearch(study, storage, space_v1, 3_000_000, 10, {"epochs": 2, "seed": 0}, 2,
                                    startup=2, costs=costs)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    searcher.on_trial_result("t0", {"epoch": 1, "val_acc": 0.3})
    searcher.on_trial_complete("t0", result={"epoch": 2, "val_acc": 0.5, "status": "ok"})
    searcher.on_trial_complete("t1", result={"epoch": 1, "val_acc": 0.2, "status": "ok"})  # stopped at a rung
    trials = {t.user_attrs.get("ray_trial_id"): t for t in study.trials}
    done, stopped = trials["t0"], trials["t1"]
    assert done.values == [0.5, costs.counts(configs["t0"])["params"]]
    assert done.user_attrs["val_acc_epoch_1"] == 0.3 and done.user_attrs["val_acc_epoch_2"] == 0.5
    assert done.user_attrs["macs"] == costs.counts(configs["t0"])["macs"]
    assert stopped.state == optuna.trial.TrialState.PRUNED and stopped.user_attrs["val_acc_epoch_1"] == 0.2
    # Past its start-up, TPE samples from these trials (pruned and over-budget ones among
    # them) without failing: Optuna's TPE raises on pruned trials with intermediate values
    # in a multi-objective study, which is why the epochs are user attributes.
    for i in range(3, 8):
        searcher.on_trial_complete(f"t{i - 1}", result={"epoch": 1, "val_acc": 0.1, "status": "ok"})
        assert searcher.suggest(f"t{i}") is not None
    assert any(t.user_attrs.get("proposed_by") == "tpe" for t in study.trials)


# ----------------------------------------------------------------------------- end to end
PARETO_SPACE = '''
def space(trial):
    width = trial.suggest_categorical("width", [8, 16, 24])
    return {"blocks": [1, 1], "widths": [width, 2 * width], "batch_size": 32, "warmup_epochs": 0,
            "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True)}
'''


@pytest.fixture(scope="module")
def pareto_search(ray_session, tmp_path_factory):
    """A --minimize params search killed (SIGKILL) once two trials had ended, then resumed."""
    import subprocess
    import sys

    from conftest import rows_of, settings
    from search.run import run_search

    tmp = tmp_path_factory.mktemp("pareto")
    space = tmp / "space.py"
    space.write_text(PARETO_SPACE)
    args = [sys.executable, "-m", "search.run", "--gpus", "0", "--address", ray_session.address, "--dataset",
            "synthetic", "--subset", "600", "--trials", "6", "--max-epochs", "3", "--grace-epochs", "1",
            "--reduction-factor", "2", "--space", str(space), "--storage", str(tmp), "--name", "front",
            "--param-budget", "1000000", "--minimize", "params", "--verbose", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    folder = tmp / "front"
    finished_before: dict = {}

    def two_finished() -> bool:
        if (folder / "trials.csv").is_file():
            finished_before.clear()
            finished_before.update({r.trial_id: r for r in rows_of(folder) if r.status in ("completed", "stopped")})
        return len(finished_before) >= 2

    kill_when(proc, two_finished, timeout=180, what="two finished trials")
    outcome = run_search(settings(tmp, space, name="front", resume=True, trials=6, subset=600, param_budget=10**6,
                                  minimize="params"))
    return outcome, finished_before


def test_a_pareto_search_resumes_after_a_kill_and_records_its_costs(pareto_search):
    from conftest import check_resumed
    from search.records import read_history
    from trainable.cost import count_macs

    outcome, finished_before = pareto_search
    folder = outcome.folder
    assert outcome.complete and "search finished: 6 trials run" in outcome.summary
    rows = check_resumed(folder, finished_before, trials=6)
    for row in rows:
        assert row.macs == count_macs(row.run_config, 10, 32)
    study = load_study(folder)
    history: dict = {}
    for h in read_history(folder):
        history.setdefault(h["trial_id"], {})[h["epoch"]] = h["val_acc"]
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 6 and all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    for trial in launched:
        epochs = {int(k.rsplit("_", 1)[1]): v for k, v in trial.user_attrs.items() if k.startswith("val_acc_epoch_")}
        assert epochs == pytest.approx(history[trial.user_attrs["ray_trial_id"]])
        if trial.state == optuna.trial.TrialState.COMPLETE:
            row = next(r for r in rows if r.trial_id == trial.user_attrs["ray_trial_id"])
            assert trial.values == pytest.approx([row.last_val_acc, row.params])
        else:
            assert trial.state == optuna.trial.TrialState.PRUNED


def test_front_json_holds_exactly_the_non_dominated_trials(pareto_search):
    from conftest import rows_of

    folder = pareto_search[0].folder
    rows = [r for r in rows_of(folder) if r.status != "diverged"]
    points = {r.trial_id: (r.best_val_acc, -r.params) for r in rows}
    expected = {t for t, p in points.items() if not any(dominates(q, p) for q in points.values())}
    front = json.loads((folder / "front.json").read_text())
    assert front["objective"] == "params" and {m["trial_id"] for m in front["members"]} == expected
    assert front["knee"] in expected
    member = front["members"][0]
    assert {"trial_id", "val_acc", "params", "macs", "latency_ms", "epoch", "config"} <= set(member)
    assert [m["params"] for m in front["members"]] == sorted(m["params"] for m in front["members"])


def test_the_front_table_report_and_retrain_of_a_pareto_search(pareto_search, cli, tmp_path):
    from analysis.report import main as report
    from analysis.table import main as table
    from search.retrain import main as retrain

    folder = pareto_search[0].folder
    front = json.loads((folder / "front.json").read_text())
    code, out, _ = cli(table, [folder, "--front"])
    assert code == 0 and "Pareto front: best val_acc against params" in out and "<- knee" in out
    assert all(m["trial_id"] in out for m in front["members"]) and "<= 0.25M params" in out
    code, out, _ = cli(report, [folder, "--out", tmp_path / "report"])
    assert code == 0 and (tmp_path / "report" / "pareto_front.png").stat().st_size > 0
    assert (tmp_path / "report" / "hypervolume.png").stat().st_size > 0
    assert "Hypervolume reference point: val_acc 0 and params 1,000,000" in (tmp_path / "report" / "report.md").read_text()
    code, out, err = cli(retrain, [folder, "--front", "--epochs", "1", "--subset", "200", "--out", tmp_path / "f"])
    assert code == 0, err
    written = (tmp_path / "f" / "front.csv").read_text().splitlines()
    assert len(written) == len(front["members"]) + 1
    assert all((tmp_path / "f" / m["trial_id"] / "weights.pt").is_file() for m in front["members"])


def test_auto_confirms_what_its_pick_names(pareto_search):
    from search.confirm import candidates
    from trainable.errors import UserError

    folder = pareto_search[0].folder
    front = json.loads((folder / "front.json").read_text())
    assert candidates(read_trials(folder), "knee", 2, "params")[0][0] == front["knee"]
    best = candidates(read_trials(folder), "best", 6, "params")
    assert [c[2] for c in best] == sorted((c[2] for c in best), reverse=True)
    cheapest = min(m["params"] for m in front["members"])
    under = candidates(read_trials(folder), f"under:{cheapest}", 6, "params")
    assert under[0][0] == front["members"][0]["trial_id"]  # the cheapest member is the best that cheap
    with pytest.raises(UserError, match="no trial of the search costs at most"):
        candidates(read_trials(folder), "under:0.000001", 2, "params")


def test_a_latency_search_measures_each_architecture_once_in_its_own_slot(ray_session, tmp_path):
    """--minimize latency end to end: the probe's records in latency.json, trials.csv and the study."""
    from conftest import rows_of, settings
    from search.run import run_search

    space = tmp_path / "space.py"
    space.write_text(PARETO_SPACE)
    outcome = run_search(settings(tmp_path, space, name="fast", trials=3, max_epochs=2, subset=300,
                                  param_budget=10**6, minimize="latency"))
    measured = json.loads((outcome.folder / "latency.json").read_text())
    by_width = {json.loads(k)["widths"][0]: v for k, v in measured.items()}
    rows = rows_of(outcome.folder)
    assert len(measured) == len({r.config["widths"][0] for r in rows})  # once per architecture
    assert all(v["isolated"] and v["batch1_runs"] >= 3 and v["batch256_ms"] > v["batch1_ms"] for v in measured.values())
    for row in rows:
        assert row.latency_ms == by_width[row.config["widths"][0]]["batch1_ms"]
    study = load_study(outcome.folder)
    for trial in study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            row = next(r for r in rows if r.trial_id == trial.user_attrs["ray_trial_id"])
            assert trial.values[1] == row.latency_ms
    assert json.loads((outcome.folder / "front.json").read_text())["objective"] == "latency"
