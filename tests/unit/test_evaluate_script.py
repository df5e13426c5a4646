"""scripts/evaluate.py's command line, and the one run of the whole experiment: two photos on a
tiny budget through ``main``, with the unit tests' random-init model instead of the weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from saliency_service.methods import METHODS
from saliency_tools.evaluate import cli, experiment, photos
from saliency_tools.evaluate.charts import figure
from saliency_tools.evaluate.interpretation import interpretation
from saliency_tools.evaluate.report import HAND_WRITTEN, report_markdown, write_report
from saliency_tools.evaluate.summary import summarise
from saliency_tools.evaluate.tables import photos_table, randomisation_table, summary_table
from saliency_tools.weights import WeightsError

# The smallest budget that still exercises every part: 2 noisy copies (VarGrad of one copy is a
# constant map), 1 IG point, 2 curve steps (with 1 the curves would not depend on the maps) and
# one randomised photo (the cascade of 11 models dominates the run's time).
TINY = ["--samples", "2", "--steps", "1", "--pixels-per-step", str(224 * 224 // 2)]
TINY += ["--randomisation-photos", "1", "--batch-size", "8"]


def test_the_command_line_defaults_are_the_settings_and_images_names_a_folder(tmp_path) -> None:
    assert cli.settings_from(cli.parse_arguments([])) == experiment.Settings()
    args = cli.parse_arguments(["--images", str(tmp_path), *TINY, "--noise", "0.3", "--seed", "4"])
    assert args.images == tmp_path and args.out is None
    assert cli.settings_from(args) == experiment.Settings(
        samples=2, noise=0.3, steps=1, seed=4, pixels_per_step=25088, randomisation_photos=1,
        batch_size=8,
    )  # fmt: skip
    # The service's defaults are the experiment's: the report evaluates what is served.
    assert experiment.Settings().noise == METHODS["smoothgrad"].defaults()["noise"]
    assert experiment.Settings().samples == METHODS["smoothgrad"].defaults()["samples"]
    assert experiment.Settings().steps == METHODS["integrated_gradients"].defaults()["steps"]


def test_help_names_the_report_and_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_arguments(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "Faithfulness report: how far the service's saliency maps can be trusted" in text
    for option in ("--images", "--out", "--samples", "--noise", "--steps", "--seed"):
        assert option in text
    for option in ("--pixels-per-step", "--randomisation-photos", "--batch-size"):
        assert option in text


def test_missing_weights_stop_the_run_with_the_reason(monkeypatch, capsys, tmp_path) -> None:
    def no_weights(cache: Path) -> Path:
        raise WeightsError("no weights here")

    monkeypatch.setattr(cli, "resolve_weights", no_weights)
    assert cli.main(["--out", str(tmp_path)]) == 1
    assert "error: no weights here" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_new_report_keeps_the_hand_written_part(tmp_path) -> None:
    report = tmp_path / "faithfulness.md"
    hand = f"{HAND_WRITTEN}, kept -->\n\n## In short\nprose\n"
    report.write_text("# old generated report\n\n" + hand)
    write_report(report, "# new report\n")
    assert report.read_text() == "# new report\n\n" + hand
    fresh = tmp_path / "fresh.md"
    write_report(fresh, "# only generated\n")
    assert fresh.read_text() == "# only generated\n"


def test_a_tiny_run_writes_the_report_and_figure_of_its_results(
    model, labels, tmp_path, monkeypatch, capsys
) -> None:
    """Two photos in two chunks of one (each keeps its own seed), 1 randomised: the files and
    the printed tables are those of the results the experiment returned."""
    folder = tmp_path / "photos"
    folder.mkdir()
    encoded = photos.skimage_photos()
    for name in ("chelsea", "coffee"):
        (folder / f"{name}.png").write_bytes(encoded[name])
    out = tmp_path / "out"
    out.mkdir()
    (out / "faithfulness.md").write_text(f"old\n{HAND_WRITTEN} -->\nkept\n")
    runs: list[experiment.Results] = []

    def recorded_run(*arguments) -> experiment.Results:
        runs.append(experiment.run(*arguments))
        return runs[-1]

    monkeypatch.setattr(cli, "resolve_weights", lambda cache: Path("weights.pth"))
    monkeypatch.setattr(cli, "load_model", lambda path: model)
    monkeypatch.setattr(cli, "run", recorded_run)
    monkeypatch.setattr(experiment, "PHOTO_CHUNK", 1)
    assert cli.main(["--images", str(folder), "--out", str(out), *TINY]) == 0

    [results] = runs
    assert results.photos.names == ["chelsea", "coffee"]
    assert list(results.deletion) == [*experiment.METHOD_NAMES, experiment.RANDOM]
    assert results.deletion[experiment.RANDOM].probabilities.shape == (2, 3)  # 2 steps
    for steps in results.randomisation.values():
        assert [step.block for step in steps][:2] == [None, "classifier.1"] and len(steps) == 11
        torch.testing.assert_close(steps[0].correlations, torch.ones(1, dtype=torch.float64))
    # The chunks joined in photo order, photo n's random map from seed n as if in one chunk.
    inputs = results.photos.inputs
    with torch.no_grad():
        targets = model(inputs).argmax(dim=1)
    assert results.labels == [labels[int(t)] for t in targets]
    random = {experiment.RANDOM: experiment.random_maps(2, (224, 224), seed=0)}
    whole = experiment.curves_of(model, inputs, random, targets, results.settings)
    for got, expected in zip((results.deletion, results.insertion), whole, strict=True):
        torch.testing.assert_close(
            got[experiment.RANDOM].probabilities, expected[experiment.RANDOM].probabilities
        )

    summary = summarise(results)
    printed = capsys.readouterr().out
    for part in (summary_table(summary), randomisation_table(results, summary)):
        assert part in printed
    assert interpretation(summary) in printed
    written = (out / "faithfulness.md").read_text()
    assert written.endswith(f"\n{HAND_WRITTEN} -->\nkept\n") and not written.startswith("old")
    generated = report_markdown(results, summary, "python scripts/evaluate.py", 1.0, 1.0)
    # The same report but for the command line and the measured times.
    assert (
        written.split("## Summary")[1].split("## Cost")[0]
        == (generated.split("## Summary")[1].split("## Cost")[0])
    )
    assert f"scripts/evaluate.py --images {folder}" in written
    assert photos_table(results) in written
    with Image.open(out / "faithfulness.png") as drawn:
        assert drawn.size == figure(results, summary).size
