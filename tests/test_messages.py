"""What the commands say: --help that does not contradict itself, and the "next:" hints of
the search's summary, which must point at a command that suits the search just run."""

import re

from search.records import FRONT
from search.tune.experiment import summary


def help_entry(text: str, flag: str) -> str:
    """The help of one flag: from its name to the next flag's entry (argparse's layout)."""
    start = text.index(f"  {flag} ")
    following = re.search(r"\n  -", text[start + 1:])
    return " ".join(text[start:start + 1 + following.start() if following else None].split())


def test_auto_help_calls_the_deadline_required_and_gives_it_no_default(cli):
    from search.auto import main

    code, out, _ = cli(main, ["--help"])
    assert code == 0
    entry = help_entry(out, "--time-budget")
    assert "required" in entry and "default" not in entry, entry
    # The same flag of search.run is optional, and says what leaving it out does.
    from search.run import main as run_main

    _, out, _ = cli(run_main, ["--help"])
    assert "required" not in help_entry(out, "--time-budget")


def next_lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("next:", 1)[1].splitlines() if line.strip()]


def search_summary(folder, on_gpu: bool) -> str:
    return summary(folder, rows=[], best=None, rejected=0, wall_seconds=60, ran_seconds=60, on_gpu=on_gpu,
                   requested=0, deadline_hit=False)


def test_after_a_cpu_search_the_retrain_hint_has_a_time_budget_not_the_200_epoch_default(tmp_path):
    cpu = next_lines(search_summary(tmp_path, on_gpu=False))
    gpu = next_lines(search_summary(tmp_path, on_gpu=True))
    assert f"python -m search.retrain {tmp_path} --time-budget 30m --ema" in cpu
    assert f"python -m search.retrain {tmp_path}" in gpu  # on a GPU the 200 epochs are the point
    assert not any("--front" in line for line in cpu + gpu)  # no front: not a Pareto search


def test_the_pareto_summary_points_at_retraining_the_front(tmp_path):
    (tmp_path / FRONT).write_text("{}")
    cpu = next_lines(search_summary(tmp_path, on_gpu=False))
    gpu = next_lines(search_summary(tmp_path, on_gpu=True))
    assert f"python -m search.retrain {tmp_path} --front --epochs 30" in cpu
    assert f"python -m search.retrain {tmp_path} --front" in gpu


def test_the_param_budget_is_taken_as_people_write_it(cli, tmp_path):
    from search.run import main
    from search.settings import settings_from_args

    assert settings_from_args(["--param-budget", "5M"]).param_budget == 5_000_000
    assert settings_from_args(["--param-budget", "500k"]).param_budget == 500_000
    assert settings_from_args(["--param-budget", "1.5M"]).param_budget == 1_500_000
    code, _, err = cli(main, ["--param-budget", "5X", "--storage", tmp_path])
    assert code == 2 and "not a count like 5M" in err
    assert not any(tmp_path.iterdir())  # nothing written for a refused command


def test_tunes_notices_about_its_own_speed_are_muted_below_verbose_2():
    """Tune's `warn_if_slow` notices ("... may be a performance bottleneck") go through its
    utilities' logger: muted while a search runs quietly, shown at --verbose 2."""
    import logging

    from ray.tune.utils import util

    from search.run import quiet_ray

    class Kept(logging.Handler):  # Ray's loggers do not propagate to the root's (pytest's) handlers
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    kept = Kept()
    util.logger.addHandler(kept)
    notice = "The `process_trial_result` operation took 0.513 s, which may be a performance bottleneck."
    try:
        with quiet_ray(1):
            util.logger.warning(notice)
        assert kept.messages == []
        with quiet_ray(2):
            util.logger.warning(notice)
        assert kept.messages == [notice]
    finally:
        util.logger.removeHandler(kept)
