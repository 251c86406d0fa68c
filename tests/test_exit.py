"""How the ``ctgrid`` program ends (:mod:`ctgrid.cli._exit`): with torch loaded the
interpreter's teardown is skipped, but everything one can observe of an ordinary exit stays —
the exit code, buffered output, atexit handlers, non-daemon threads — and MPI is finalised
(the MPI tests run every rank through it, under MPICH's and Open MPI's launchers)."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ctgrid.cli._exit import exit_code

SCRIPT = textwrap.dedent("""\
    import atexit, sys, threading, time
    {imports}
    from ctgrid.cli._exit import exit_now
    out = sys.argv[1]

    class Teardown:   # finalised by the interpreter's module teardown (names bound now: by then
        def __del__(self, path=out + "/teardown", open=open):   # the module's globals are None)
            open(path, "w").close()
    sys.modules["planted"] = type(sys)("planted")
    sys.modules["planted"].keep = Teardown()
    atexit.register(lambda: open(out + "/atexit", "w").close())
    if {thread}:
        def late():
            time.sleep(0.3)
            open(out + "/thread", "w").close()
        threading.Thread(target=late).start()
    sys.stdout.write("buffered, no newline")
    exit_now(3)
    """)


def run(tmp_path: Path, imports: str, thread: bool = False) -> tuple[subprocess.CompletedProcess, set[str]]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(imports=imports, thread=thread))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    return proc, {p.name for p in tmp_path.iterdir()} - {"script.py"}


def test_with_torch_loaded_the_teardown_is_skipped_and_the_rest_of_an_exit_kept(tmp_path):
    proc, made = run(tmp_path, "import torch")
    assert (proc.returncode, proc.stdout) == (3, "buffered, no newline"), proc.stderr
    assert made == {"atexit"}, "atexit handlers ran; module teardown (the object's __del__) did not"


def test_a_non_daemon_thread_still_running_is_waited_for(tmp_path):
    proc, made = run(tmp_path, "import torch", thread=True)
    assert (proc.returncode, proc.stdout) == (3, "buffered, no newline"), proc.stderr
    assert {"atexit", "thread"} <= made


def test_without_torch_the_exit_is_the_ordinary_one(tmp_path):
    proc, made = run(tmp_path, "")
    assert (proc.returncode, proc.stdout) == (3, "buffered, no newline"), proc.stderr
    assert {"atexit", "teardown"} <= made


@pytest.mark.parametrize("code,status", [(None, 0), (0, 0), (3, 3), (256, 0), (-1, 255), (True, 1)])
def test_exit_codes_map_as_the_interpreter_maps_them(code, status):
    assert exit_code(code) == status


def test_a_message_exits_1_after_printing_it(capsys):
    assert exit_code("ctgrid: something") == 1
    assert capsys.readouterr().err == "ctgrid: something\n"


def test_the_installed_command_is_the_program_that_ends_through_it():
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "ctgrid"]
    assert script.value == "ctgrid.cli:program", "reinstall ctgrid (pip install -e .)"


def test_python_m_ctgrid_train_skips_the_teardown_and_keeps_its_files(tmp_path):
    """A real command that imports torch, through ``python -m ctgrid``: exit 0, its model and
    history written, and an object planted before it never finalised (no module teardown)."""
    code = textwrap.dedent(f"""\
        import runpy, sys
        class Teardown:
            def __del__(self, path={str(tmp_path / "teardown")!r}, open=open):
                open(path, "w").close()
        sys.modules["planted"] = type(sys)("planted")
        sys.modules["planted"].keep = Teardown()
        sys.argv = ["ctgrid", "train", "--data", "moons", "--objective", "vanilla", "--nepochs", "1",
                    "data.n_train=100", "--out", {str(tmp_path / "model")!r}]
        runpy.run_module("ctgrid", run_name="__main__")
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model").is_dir() and any((tmp_path / "model").iterdir())
    assert not (tmp_path / "teardown").exists()
