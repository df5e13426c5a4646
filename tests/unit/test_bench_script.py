"""scripts/bench.py's and scripts/bench_methods.py's command lines: options, modes, dispatch.

The measuring parts have their own tests (test_bench_load, test_bench_inprocess,
test_bench_report, test_bench_methods); nothing here starts a server or times anything.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

from saliency_tools import ROOT
from saliency_tools.bench import arch, methods
from saliency_tools.bench import main as bench
from saliency_tools.bench.modes import FULL, QUICK
from saliency_tools.bench.serving import OPENMP_VARIABLES


def test_quick_and_full_modes_with_their_overrides() -> None:
    parse = bench.parser().parse_args
    assert bench.chosen_mode(parse([])) == FULL
    assert bench.chosen_mode(parse(["--quick"])) == QUICK
    quick_compiled = bench.chosen_mode(parse(["--quick", "--compile", "--server-levers"]))
    assert (quick_compiled.compile, quick_compiled.server_levers) == (True, True)
    assert quick_compiled.requests == QUICK.requests
    lean = bench.chosen_mode(parse(["--no-compile", "--no-server-levers"]))
    assert (lean.compile, lean.server_levers, lean.rounds) == (False, False, FULL.rounds)


def test_the_command_line_takes_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(bench, "arch_main", lambda args, argv, log: seen.update(args=args) or 0)
    monkeypatch.setattr(bench.signal, "signal", lambda *_: None)
    for name in OPENMP_VARIABLES:  # main clears them; restored after the test
        monkeypatch.setenv(name, "1")
    argv = ["--arch", "resnet50", "mobilenet_v3_large", "--concurrency", "4", "--seconds", "6"]
    assert bench.main(argv) == 0
    args = seen["args"]
    assert args.arch == ["resnet50", "mobilenet_v3_large"]
    assert (args.concurrency, args.seconds, args.rounds, args.num_classes) == (4, 6.0, 4, 1000)
    assert not any(name in os.environ for name in OPENMP_VARIABLES)


@pytest.mark.parametrize("script", [bench, methods])
def test_missing_weights_end_the_run_before_anything_is_measured(
    script, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(script.signal, "signal", lambda *_: None)
    for name in OPENMP_VARIABLES:  # main clears them; restored after the test
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("SQUEEZENET_WEIGHTS", str(tmp_path / "missing.pth"))
    output = tmp_path / "benchmarks.md"
    assert script.main(["--quick", "--output", str(output)]) == 1
    assert "missing.pth is not a file" in capsys.readouterr().err
    assert not output.exists()


def test_worker_memory_is_read_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t 9000 kB\nVmHWM:\t  812340 kB\nVmRSS:\t  790000 kB\n"
    assert arch.memory_kib(status) == {"VmHWM": 812340, "VmRSS": 790000}
    assert arch.memory_kib("Name:\tkthreadd\n") == {}


@pytest.mark.parametrize("script", ["bench.py", "bench_methods.py"])
def test_the_entry_points_answer_help(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The script file itself, run as ``__main__`` in this process (torch is already imported
    here, so this costs milliseconds where a fresh interpreter costs seconds)."""
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit_status:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert "--no-inprocess" in out and "--quick" in out
