"""scripts/evaluate.py end to end on a tiny budget: the report and the figure are built."""

from __future__ import annotations

import argparse

import evaluate
from PIL import Image


def test_a_small_run_writes_both_tables_the_interpretation_and_the_figure(model, labels, tmp_path):
    photos = evaluate.prepare(evaluate.default_photos())
    settings = {"samples": 1, "noise": 0.15, "seed": 0, "batch_size": 8}
    args = argparse.Namespace(pixels_per_step=224 * 224 // 4, **settings)
    results = evaluate.evaluate(model, photos, labels, args)

    assert set(results.deletion) == set(results.insertion) == {"vanilla", "smoothgrad", "random"}
    assert results.deletion["random"].probabilities.shape == (2, 5)
    steps = results.randomisation["smoothgrad"]
    assert [step.block for step in steps][:2] == [None, "classifier.1"] and len(steps) == 11

    report = evaluate.report_markdown(results, "python scripts/evaluate.py", 1.0, 1.0)
    for expected in ("| vanilla |", "| smoothgrad |", "| random |", "| conv10 |", "| conv1 |"):
        assert expected in report
    assert "chelsea" in report and "faithfulness.png" in report
    path = tmp_path / "figure.png"
    evaluate.figure(results).save(path)
    with Image.open(path) as figure:
        assert figure.width > 1000 and figure.height > 500
