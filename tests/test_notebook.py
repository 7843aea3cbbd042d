"""The notebook API: keyword flags mean what the command line means, and the quickstart
notebook runs top to bottom in a real Jupyter kernel."""

import textwrap
import time
from pathlib import Path

import pytest

from search.api import flags_to_argv

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "quickstart.ipynb"


def test_keyword_flags_are_the_command_lines_flags():
    from search.settings import build_parser, settings_from_parsed

    argv = flags_to_argv([], {"gpus": 0, "max_epochs": 3, "set": {"cutout": 16, "augment_policy": "trivialaugment"},
                              "warm_start": False, "resume": False, "name": "x"})
    settings = settings_from_parsed(vars(build_parser().parse_args(argv)))
    assert settings.max_epochs == 3 and settings.gpus == 0 and settings.name == "x" and not settings.warm_start
    assert settings.overrides == {"cutout": 16, "augment_policy": "trivialaugment"} and not settings.resume


def test_a_bad_flag_raises_the_commands_error_in_keywords(tmp_path):
    from search.api import predict, search
    from trainable.errors import UserError

    with pytest.raises(UserError, match=r"unknown keyword 'max_epoch'; did you mean 'max_epochs'\?"):
        search(max_epoch=3, storage=str(tmp_path))
    with pytest.raises(UserError, match=r"unknown keyword 'tt'; did you mean 'tta'\?"):
        predict(tmp_path / "model", input="x.npy", tt=True)
    with pytest.raises(UserError, match="^trials must be positive"):
        search(trials=0, gpus=0, dataset="synthetic", storage=str(tmp_path))
    assert not any(tmp_path.iterdir())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("someone's files")
    with pytest.raises(UserError, match="pass resume=True to continue it") as error:
        search(name="taken", gpus=0, dataset="synthetic", storage=str(tmp_path))
    assert "--" not in str(error.value)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]


STOPPED = textwrap.dedent('''
    from pathlib import Path
    space = Path("space.py")
    space.write_text('def space(trial):\\n    return {"blocks": [1, 1], "widths": [16, 32], "batch_size": 32, '
                     '"warmup_epochs": 0, "lr": trial.suggest_float("lr", 1e-3, 1e-2, log=True)}\\n')
    kw = dict(gpus=0, dataset="synthetic", subset=400, max_epochs=2, grace_epochs=1, reduction_factor=2,
              param_budget=10**6, space=str(space), storage="runs", name="stop", verbose=0)
    stopped = search(trials=4, **kw)
    Path("stopped.txt").write_text(str(stopped.complete))
''')
RESUMED = "again = search(trials=4, resume=True, storage='runs', name='stop', verbose=0)\nimport analysis\nprint('AGAIN', again.complete, len(analysis.load(again.folder)))"


def test_the_quickstart_notebook_runs_in_a_real_kernel_and_its_stop_button_ends_a_search(tmp_path):
    """The quickstart top to bottom in an ipykernel, as a user runs it; then, in the same
    kernel (Ray already running), a second search stopped with the kernel's interrupt (the
    notebook's stop button) returns incomplete, and a third call resumes it to the end."""
    import nbclient
    import nbformat
    from nbclient.util import run_sync

    from conftest import rows_of

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
        assert not any(o.get("output_type") == "error" for cell in outputs.values() for o in cell)

        client.kc.execute(STOPPED)  # run without waiting, as a user's cell runs
        folder = tmp_path / "runs" / "stop"
        deadline = time.time() + 120
        while time.time() < deadline and not ((folder / "trials.csv").is_file() and rows_of(folder)):
            time.sleep(0.2)
        run_sync(client.km.interrupt_kernel)()  # what Jupyter's stop button sends
        notebook.cells.append(nbformat.v4.new_code_cell(RESUMED))
        resumed = client.execute_cell(notebook.cells[-1], len(notebook.cells) - 1)  # queued behind the stopped cell
        assert (tmp_path / "stopped.txt").read_text() == "False"  # the call returned, incomplete
        assert "AGAIN True 4" in "".join(o.get("text", "") for o in resumed.outputs)
    text = "\n".join(o.get("data", {}).get("text/plain", "") if o.get("output_type") == "execute_result"
                     else o.get("text", "") for cell in outputs.values() for o in cell)
    assert "SearchResult(" in text and "complete" in text and "test accuracy" in text
    assert any("image/png" in o.get("data", {}) for cell in outputs.values() for o in cell)  # the plot
    rows = (tmp_path / "quickstart-output" / "submission.csv").read_text().splitlines()
    assert rows[0] == "ID,Labels" and len(rows) == 21
    # Everything the notebook wrote is in its one output folder (runs/ of the test's own
    # searches aside), and the curves' figure is shown once.
    assert {p.name for p in tmp_path.iterdir()} <= {"quickstart-output", "runs", "space.py", "stopped.txt"}
    assert sum("image/png" in o.get("data", {}) for o in outputs[max(outputs)]) == 1
    # Progress stays readable: the tool's own line at verbosity 1, not Ray's boxes per trial.
    streamed = sum(len(o.get("text", "").splitlines()) for cell in outputs.values() for o in cell
                   if o.get("output_type") == "stream")
    assert streamed < 60, streamed
