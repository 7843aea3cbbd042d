"""--warm-from: a new search starts from what an earlier one learned, through Optuna's own
add_trials (same space) or enqueue_trial (another space)."""

import optuna
import pytest

from conftest import settings
from search.records import load_study


def test_a_search_warm_started_from_the_same_space_learns_from_the_old_trials(finished_search, space_file,
                                                                               tmp_path):
    from search.records import rejected_count
    from search.run import run_search

    old = load_study(finished_search.folder)
    finished = [t for t in old.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    rejected = [t for t in finished if t.user_attrs.get("status") == "rejected"]
    trained = len(finished) - len(rejected)
    # The space, and so the parameters' meaning, is the same: the old trials join the study.
    outcome = run_search(settings(tmp_path, space_file, name="warm", trials=4, max_epochs=1, seed=5,
                                  param_budget=10**6, warm_from=str(finished_search.folder)))
    assert (f"its {trained} trained trials and {len(rejected)} configs it rejected for the budget are in the "
            "study") in outcome.summary
    new = load_study(outcome.folder)
    taken = [t for t in new.trials if t.user_attrs.get("warm_from") == "exp"]
    assert [(t.params, t.values, t.state) for t in taken] == [(t.params, t.values, t.state) for t in finished]
    assert not any("ray_trial_id" in t.user_attrs for t in taken)  # never mistaken for this search's own
    launched = sorted((t for t in new.trials if "ray_trial_id" in t.user_attrs), key=lambda t: t.number)
    # The random start-up counts the old trained trials (8 of the 10), not its rejections: two
    # more random launches, then TPE.
    assert trained == 8 and len(rejected) > 10
    assert [t.user_attrs["proposed_by"] for t in launched] == ["startup", "startup", "tpe", "tpe"]
    assert rejected_count(outcome.folder) == sum(t.user_attrs.get("status") == "rejected" for t in new.trials
                                                 if "warm_from" not in t.user_attrs)


def test_a_search_over_another_space_runs_the_old_top_configs_first(finished_search, space_file, tmp_path):
    from search.records import rank, read_trials
    from search.run import run_search

    old_rows = {r.trial_id: r for r in read_trials(finished_search.folder)}
    old = {t.user_attrs.get("ray_trial_id"): t.params for t in load_study(finished_search.folder).trials}
    top = [old[r.trial_id] for r in rank(old_rows.values())][:2]
    # Another space file (one more fixed key) with the same parameter names.
    from conftest import TINY_SPACE

    other = tmp_path / "other_space.py"
    other.write_text(TINY_SPACE.replace('"batch_size": 64,', '"batch_size": 64, "cutout": 8,'))
    outcome = run_search(settings(tmp_path, other, name="other", trials=2, max_epochs=1,
                                  warm_from=str(finished_search.folder)))
    assert "its space differs; its top" in outcome.summary
    launched = sorted((t for t in load_study(outcome.folder).trials if "ray_trial_id" in t.user_attrs),
                      key=lambda t: t.number)
    assert [t.params for t in launched] == top  # the old best two, first, as they were
    assert all(t.user_attrs["warm_from"] == "exp" for t in launched)


def test_warm_from_a_folder_that_is_not_an_experiment_is_refused(tmp_path, space_file):
    from search.run import run_search
    from trainable.errors import UserError

    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="not an experiment"):
        run_search(settings(tmp_path, space_file, name="w", warm_from=str(tmp_path / "nothing")))
    assert not (tmp_path / "w").exists()
