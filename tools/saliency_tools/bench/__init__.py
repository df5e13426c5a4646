"""The benchmarks (docs/benchmarks.md), in parts that each do one thing.

- ``photos``: the photos every part sends; ``modes``: how much a run of ``main`` measures;
- ``machine``: where a run ran (CPU, versions, load), for the reports' headers;
- ``load``: closed-loop load generation: contenders, slices at a concurrency, rotation, figures;
- ``stock``: TorchServe's stock ``image_classifier`` archive, its requests and its answers;
- ``serving``: the TorchServe servers a run starts, and the server settings compared;
- ``served``: the end-to-end half of ``scripts/bench.py`` (contenders on one server);
- ``inprocess``: timing in process, reading the pipeline's own stage report;
- ``levers``: the optimisation levers timed in process;
- ``arch``: ``--arch``, saliency vs classification for any torchvision architecture;
- ``report`` / ``methods_report``: the Markdown reports, pure functions of measured data;
- ``maps``: our served maps against Captum's;
- ``main`` / ``methods``: the two command lines (``scripts/bench.py``,
  ``scripts/bench_methods.py``), composing the parts.

The reports give figures and ratios only; the goals they are read against are in the docs.
"""
