"""A search that learns: a space that spends the budget, a start-up counted in launched
trials on its own random stream, the learning rate modelled with the rest, warm-up that
follows the horizon, and old studies that resume with the space they were made with."""

import json
import shutil
import statistics
import types

import optuna
import pytest

from conftest import rows_of, settings
from search.run import build_searcher, run_search
from search.settings import prepare_folder
from search.tune.searcher import BudgetedOptunaSearch
from search.tune.space import BASE_LR, BASE_WEIGHT_DECAY, MAX_WARMUP_SHARE, default_space, params_of, space_v1
from search.tune.sampler import STARTUP_LAUNCHED, LaunchedStartup
from trainable.model import count_params
from trainable.zoo import DEADLINE_RECIPE, SEED, fit_to_budget
from search.records import load_study

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Drawn through Optuna as a search draws them (about 1.5 ms a draw here); 10,000 per budget
# were checked once (README), the suite keeps to 3,000.
DRAWS = 3000


def draws(budget, count, seed=0, horizon=20):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [default_space(study.ask(), {"epochs": horizon}, budget) for _ in range(count)]


@pytest.mark.parametrize("budget", [5_000_000, 1_000_000, 200_000])
def test_every_draw_of_the_space_fits_and_spends_the_budget(budget):
    used = [count_params(config) / budget for config in draws(budget, DRAWS)]
    assert max(used) < 1.0  # nothing a search would reject
    assert statistics.median(used) >= 0.6  # version 1: a median 0.38 of 5M, and 0.5% fitting at 200k


def test_the_solve_drops_blocks_where_narrow_widths_still_overshoot():
    from search.tune.space import solve_shape

    shape = {"blocks": [6, 6, 6, 6], "width_growth": 2.5, "kernel_size": 5, "block": "basic"}
    config = solve_shape(shape, 60_000, 1.0)
    assert count_params(config) < 60_000
    assert config["blocks"][:2] == [6, 6] and sum(config["blocks"]) < 24  # the deepest stages lost blocks
    assert all(w % 8 == 0 for w in config["widths"])


def test_the_widths_and_blocks_built_are_trial_attributes():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        trial = study.ask()
        config = default_space(trial, {"epochs": 10}, 200_000)
        assert trial.user_attrs["widths"] == config["widths"] and trial.user_attrs["blocks"] == config["blocks"]


def test_lr_and_weight_decay_are_one_parameter_for_both_optimizers():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = default_space(trial, {"epochs": 10}, 1_000_000)
        optimizer = config["optimizer"]
        seen.add(optimizer)
        # Not conditional on the optimizer: TPE models the multiplier over every trial.
        assert config["lr"] == pytest.approx(BASE_LR[optimizer] * trial.params["lr_scale"])
        assert config["weight_decay"] == pytest.approx(BASE_WEIGHT_DECAY[optimizer] * trial.params["weight_decay_scale"])
        assert not {"sgd_lr", "adamw_lr", "sgd_weight_decay", "adamw_weight_decay"} & set(trial.params)
    assert seen == {"sgd", "adamw"}
    # TPE sees one distribution for it, in every trial.
    assert len({str(t.distributions["lr_scale"]) for t in study.get_trials(deepcopy=False)}) == 1


@pytest.mark.parametrize("horizon", [1, 3, 20, 200])
def test_warm_up_stays_well_inside_the_horizon(horizon):
    warmups = [config["warmup_epochs"] for config in draws(1_000_000, 200, seed=horizon, horizon=horizon)]
    assert max(warmups) <= MAX_WARMUP_SHARE * horizon + 1e-9  # version 1 drew 0-5 epochs whatever the horizon
    assert max(warmups) > 0


def test_shake_blocks_draw_no_shortcut_kernel():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    shakes = 0
    for _ in range(80):
        trial = study.ask()
        config = default_space(trial, {"epochs": 10}, 1_000_000)
        if config["block"] == "shake":
            shakes += 1
            assert "skip_kernel_size" not in trial.params and config["skip_kernel_size"] == 1
    assert shakes > 0


def test_recipes_in_the_space_s_own_terms():
    for budget, recipe in ((200_000, DEADLINE_RECIPE), (5_000_000, SEED)):
        fitted = fit_to_budget(recipe, budget)
        params = params_of(fitted, {"epochs": 20}, budget)
        built = default_space(optuna.trial.FixedTrial(params), {"epochs": 20}, budget)
        assert built["widths"] == fitted["widths"] and built["blocks"] == fitted["blocks"]
        assert built["lr"] == pytest.approx(fitted["lr"]) and built["optimizer"] == fitted["optimizer"]
        assert built["warmup_epochs"] == pytest.approx(min(fitted["warmup_epochs"], 2.0))


# ----------------------------------------------------------------------------- the start-up
WIDE_SPACE = '''
def space(trial):
    # Names its widths: most of it is over a small budget, so the searcher rejects much.
    width = trial.suggest_int("width", 8, 64, step=8)
    return {"blocks": [trial.suggest_int("blocks", 1, 4)] * 2, "widths": [width, 2 * width],
            "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True)}
'''


def test_start_up_ends_after_the_tenth_launched_trial(tmp_path):
    space = tmp_path / "space.py"
    space.write_text(WIDE_SPACE)

    def search(name: str, value) -> tuple[list, list, int]:
        """Launched configs and who proposed them, each trial told `value(i)`."""
        s = prepare_folder(settings(tmp_path, space, name=name, param_budget=60_000, warm_start=False))
        searcher = build_searcher(s, 10)
        configs, who = [], []
        for i in range(STARTUP_LAUNCHED + 4):
            config = searcher.suggest(f"t{i}")
            assert count_params(config) < 60_000
            configs.append(json.dumps({k: v for k, v in config.items() if k != "trial_id"}, sort_keys=True, default=str))
            who.append(searcher.study.trials[searcher.numbers[f"t{i}"]].user_attrs["proposed_by"])
            searcher.on_trial_complete(f"t{i}", result={"epoch": 3, "val_acc": value(i), "status": "ok"})
        return configs, who, searcher.rejected

    rising, who, rejected = search("rising", lambda i: 0.1 + 0.01 * i)
    assert rejected > STARTUP_LAUNCHED  # rejections happened, and did not end the start-up
    assert who == ["startup"] * STARTUP_LAUNCHED + ["tpe"] * 4
    # What the draws do, not only their labels: the start-up ignores the results (the same
    # ten configs whatever the trials scored), and from the 11th launch the model follows them.
    falling, _, _ = search("falling", lambda i: 0.5 - 0.01 * i)
    assert rising[:STARTUP_LAUNCHED] == falling[:STARTUP_LAUNCHED]
    assert rising[STARTUP_LAUNCHED:] != falling[STARTUP_LAUNCHED:]


def test_tpe_good_set_is_a_tenth_of_the_trials_that_trained_not_of_the_rejections():
    from search.tune.sampler import TrainedGamma

    study = optuna.create_study()
    for i in range(174):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        if i % 12 == 0:  # 15 trained trials among 159 rejections
            trial.set_user_attr("ray_trial_id", f"t{i}")
            study.tell(trial, 0.1 + i / 1000)
        else:
            trial.set_user_attr("status", "rejected")
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    gamma = TrainedGamma()
    gamma.study = study
    assert gamma(174) == 2  # Optuna's default: 18, every trained trial and 3 rejections
    assert TrainedGamma(objectives=2)(174) == 18  # no study given: Optuna's own count


def test_the_random_baseline_draws_other_configs_than_the_start_up():
    def first(sampler, count=STARTUP_LAUNCHED):
        study = optuna.create_study(sampler=sampler)
        return [json.dumps(default_space(study.ask(), {"epochs": 10}, 1_000_000), sort_keys=True) for _ in range(count)]

    for seed in (0, 1):
        baseline = first(optuna.samplers.RandomSampler(seed=seed))
        startup = first(LaunchedStartup(optuna.samplers.TPESampler(seed=seed, n_startup_trials=0), seed=seed))
        assert not set(baseline) & set(startup)
        assert startup == first(LaunchedStartup(optuna.samplers.TPESampler(seed=seed, n_startup_trials=0), seed=seed))


def test_a_resumed_start_up_does_not_replay_its_draws():
    storage = optuna.storages.InMemoryStorage()
    make = lambda: optuna.create_study(storage=storage, study_name="s", load_if_exists=True,  # noqa: E731
                                       sampler=LaunchedStartup(optuna.samplers.TPESampler(seed=0), seed=0))
    study = make()
    before = [study.ask().suggest_float("x", 0, 1) for _ in range(3)]
    again = make()  # the driver restarted: a new sampler over the same study
    after = [again.ask().suggest_float("x", 0, 1) for _ in range(3)]
    assert not set(before) & set(after)


# ----------------------------------------------------------------------------- versions
@pytest.fixture(scope="module")
def first_space_search(ray_session, tmp_path_factory):
    """A search made with version 1 of the built-in space (two trials of one epoch)."""
    tmp = tmp_path_factory.mktemp("v1")
    return run_search(settings(tmp, None, name="v1", space=None, trials=2, max_epochs=1, grace_epochs=1,
                               param_budget=500_000, warm_start=False, extra={"space_version": 1})).folder


def test_a_study_made_with_the_first_space_resumes_with_it(first_space_search, tmp_path):
    shutil.copytree(first_space_search, tmp_path / "old")
    first = types.SimpleNamespace(folder=tmp_path / "old")
    saved = json.loads((first.folder / "settings.json").read_text())
    assert saved["space_version"] == 1
    del saved["space_version"]  # as an experiment made before versions were recorded
    (first.folder / "settings.json").write_text(json.dumps(saved))
    resumed = run_search(settings(tmp_path, None, name="old", space=None, trials=4, resume=True,
                                  extra={"given": ["name", "storage", "resume", "trials"]}))
    rows = rows_of(resumed.folder)
    assert len(rows) == 4
    study = load_study(first.folder)
    launched = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(launched) == 4
    # Every launched trial, before and after the resume, has version 1's parameters.
    assert all("width_base" in t.params and "budget_shortfall" not in t.params for t in launched)
    for trial in launched:
        assert space_v1(optuna.trial.FixedTrial(trial.params), {"epochs": 1})["widths"] == next(
            r.config["widths"] for r in rows if r.trial_id == trial.user_attrs["ray_trial_id"])


def test_warm_from_the_first_space_queues_configs_in_the_new_terms(first_space_search, tmp_path):
    old = types.SimpleNamespace(folder=first_space_search)
    s = prepare_folder(settings(tmp_path, None, name="v2", space=None, trials=2, max_epochs=1,
                                param_budget=500_000, warm_from=str(old.folder)))
    searcher = build_searcher(s, 10)
    assert searcher.warm.enqueued == 2 and searcher.warm.added == 0
    queued = [t for t in searcher.study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(queued) == 2
    old_configs = [(r.config["blocks"], r.config["block"], r.config["optimizer"], r.config["lr"])
                   for r in rows_of(old.folder)]
    for trial in queued:
        config = searcher.suggest(f"w{trial.number}")
        # Version 1 named the lr sgd_lr or adamw_lr: queued as they were, version 2 would draw
        # its lr_scale anew; converted, the old lr comes back.
        assert any((config["blocks"], config["block"], config["optimizer"]) == old[:3]
                   and config["lr"] == pytest.approx(old[3]) for old in old_configs), config


def test_searcher_doc_example_uses_the_new_space():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    searcher = BudgetedOptunaSearch(study, storage, lambda t: default_space(t, {"epochs": 5}, 200_000), 200_000, 10,
                                    {"epochs": 5, "seed": 0}, 5)
    for i in range(20):
        assert searcher.suggest(f"t{i}") is not None
    assert searcher.rejected == 0  # 200k params: version 1 rejected 199 of 200 draws


# ----------------------------------------------------------------------------- rung models
def x_space(trial):
    trial.suggest_float("x", 0.0, 1.0)
    return {"blocks": [1, 1], "widths": [8, 8]}


def stopped_study(directions, count=16):
    """A main study whose trials were stopped at rung 1, the earliest-numbered the worst."""
    study = optuna.create_study(directions=directions)
    for i in range(count):
        x = i / count  # trial 0 at x = 0 (worst), the last ones near the optimum at 0.8..1
        study.add_trial(optuna.trial.create_trial(
            params={"x": x}, distributions={"x": optuna.distributions.FloatDistribution(0.0, 1.0)},
            state=optuna.trial.TrialState.PRUNED))
    return study


@pytest.mark.parametrize("directions", [["maximize"], ["maximize", "minimize"]])
def test_stopped_trials_teach_the_rung_model_by_what_they_scored(directions):
    from search.tune.rung_model import RungModel

    study = stopped_study(directions)
    model = RungModel(x_space, [1, 3, 9], directions, seed=0, random_share=0.0)
    assert model.propose() is None  # no rung has enough points yet: the main sampler proposes
    for trial in study.trials:
        accuracy = 1 - abs(trial.params["x"] - 0.85)
        model.record(1, trial, accuracy if len(directions) == 1 else [accuracy, 1.0])
    model.record(1, study.trials[0], 0.0 if len(directions) == 1 else [0.0, 1.0])  # recorded once only
    assert model.points(1) == 16 and model.proposing_rung() == 1
    proposals = [model.propose() for _ in range(30)]
    assert all(who == "rung_1" for _, who in proposals)
    # TPE's good set at rung 1 is the trials that scored best there (x near 0.85), not the
    # first-numbered ones (x near 0), which a study of stopped trials without values ranks first.
    assert statistics.median(abs(p["x"] - 0.85) for p, _ in proposals) < 0.2


def test_the_highest_rung_with_enough_points_proposes_and_a_share_stays_random():
    from search.tune.rung_model import RungModel

    study = stopped_study(["maximize"], count=40)
    model = RungModel(x_space, [1, 3, 9], ["maximize"], seed=1, random_share=0.25)
    for trial in study.trials:
        model.record(1, trial, trial.params["x"])
    for trial in study.trials[:12]:
        model.record(3, trial, trial.params["x"])
    who = [model.propose()[1] for _ in range(80)]
    assert set(who) == {"rung_3", "random"} and 0.1 < who.count("random") / 80 < 0.4


def test_a_rungs_search_proposes_from_the_rungs_and_rebuilds_them_on_resume(ray_session, tmp_path):
    first = run_search(settings(tmp_path, None, name="rungs", space=None, trials=14, max_epochs=3, grace_epochs=1,
                                reduction_factor=3, param_budget=30_000, subset=200, warm_start=False, sampler="rungs"))
    study = load_study(first.folder)
    launched = sorted((t for t in study.trials if "ray_trial_id" in t.user_attrs), key=lambda t: t.number)
    who = [t.user_attrs["proposed_by"] for t in launched]
    assert who[:STARTUP_LAUNCHED] == ["startup"] * STARTUP_LAUNCHED
    assert all(w == "tpe" or w == "random" or w.startswith("rung_") for w in who[STARTUP_LAUNCHED:])
    assert any(w.startswith("rung_") for w in who)  # 10+ trials reached rung 1: it proposed
    from search.records import read_history

    at_rung_1 = {r["trial_id"] for r in read_history(first.folder) if r["epoch"] == 1}
    s = prepare_folder(settings(tmp_path, None, name="rungs", space=None, resume=True, trials=15,
                                extra={"given": ["name", "storage", "resume", "trials"]}))
    resumed = build_searcher(s, 10)
    assert resumed.rung_model.points(1) == len(at_rung_1) >= STARTUP_LAUNCHED
