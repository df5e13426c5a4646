"""The tooling around the served model: archive building, server control, the client library,
benchmarks, evaluation, figures. Installed (editable) into the venv by ``scripts/setup.sh``; never
shipped in the ``.mar``, which holds the runtime (``saliency_service``) alone."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository: config.properties, model_store/
MODEL_NAME = "squeezenet_saliency"  # the archive's name, so the inference path's model name
SAMPLED_MODEL_NAME = f"{MODEL_NAME}_sampled"  # its second registration, for expensive requests
MAR = ROOT / "model_store" / f"{MODEL_NAME}.mar"
