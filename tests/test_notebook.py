"""The notebook API: keyword flags mean what the command line means, and the quickstart
notebook runs top to bottom in a real Jupyter kernel."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from search.api import flags_to_argv

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_keyword_flags_are_the_command_lines_flags():
    from search.run import build_parser, settings_from_parsed

    argv = flags_to_argv([], {"gpus": 0, "max_epochs": 3, "set": {"cutout": 16, "augment_policy": "trivialaugment"},
                              "warm_start": False, "resume": False, "name": "x"})
    settings = settings_from_parsed(vars(build_parser().parse_args(argv)))
    assert settings.max_epochs == 3 and settings.gpus == 0 and settings.name == "x" and not settings.warm_start
    assert settings.overrides == {"cutout": 16, "augment_policy": "trivialaugment"} and not settings.resume


def test_a_bad_flag_raises_the_commands_error(tmp_path):
    from search.api import search
    from trainable.errors import UserError

    with pytest.raises(UserError, match="unrecognized arguments: --max-epoch"):
        search(max_epoch=3, storage=str(tmp_path))
    with pytest.raises(UserError, match="--trials must be positive"):
        search(trials=0, gpus=0, dataset="synthetic", storage=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_the_quickstart_notebook_runs_in_a_real_kernel(tmp_path):
    import nbclient
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    assert not any(o.get("output_type") == "error" for cell in outputs.values() for o in cell)
    text = "\n".join(o.get("data", {}).get("text/plain", "") if o.get("output_type") == "execute_result"
                     else o.get("text", "") for cell in outputs.values() for o in cell)
    assert "SearchResult(" in text and "complete" in text and "test accuracy" in text
    assert any("image/png" in o.get("data", {}) for cell in outputs.values() for o in cell)  # the plot
    rows = (tmp_path / "submission.csv").read_text().splitlines()
    assert rows[0] == "ID,Labels" and len(rows) == 21
    # Progress stays readable: Ray's table at verbosity 1, not a line per result per trial.
    streamed = sum(len(o.get("text", "").splitlines()) for cell in outputs.values() for o in cell
                   if o.get("output_type") == "stream")
    assert streamed < 400, streamed


INTERRUPTED = textwrap.dedent('''
    import sys
    from search.api import search
    kw = dict(gpus=0, dataset="synthetic", subset=600, max_epochs=2, grace_epochs=1, reduction_factor=2,
              param_budget=10**6, space=sys.argv[2], storage=sys.argv[1], name="stop", verbose=0)
    first = search(trials=4, **kw)
    print("FIRST", first.complete, flush=True)
    again = search(trials=4, resume=True, **{k: kw[k] for k in ("storage", "name")}, verbose=0)
    print("AGAIN", again.complete, len(again.table), flush=True)
''')


def test_a_stopped_search_returns_incomplete_and_a_second_call_resumes_it(tmp_path):
    """The notebook's stop button sends SIGINT to the kernel process: the search ends as
    Ctrl-C ends it, the call returns, and the next call in the same process resumes it."""
    from conftest import rows_of

    space = tmp_path / "space.py"
    space.write_text('def space(trial):\n    return {"blocks": [1, 1], "widths": [16, 32], "batch_size": 32, '
                     '"warmup_epochs": 0, "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True)}\n')
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path), str(space)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    folder = tmp_path / "stop"
    deadline = time.time() + 120
    while time.time() < deadline and not ((folder / "trials.csv").is_file() and rows_of(folder)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert "FIRST False" in out, out
    assert "AGAIN True 4" in out, out
