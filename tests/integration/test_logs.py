"""The server under the production config logs where it should, boundedly, and keeps query
strings (which may carry keys) out of every log. tests/unit/test_logging_config.py reads the
log4j2 file itself; this watches a running TorchServe use it."""

from __future__ import annotations

from photos import packaged_photos
from serving import post, wait_for

from saliency_tools import MODEL_NAME

SECRET = "k3y-in-a-query-string"
LOGS = ("access_log.log", "model_log.log", "ts_log.log")


def test_logs_are_files_in_the_log_directory_and_the_console_stays_quiet(server) -> None:
    logs = server.workdir / "logs"  # LOG_LOCATION; ./logs under scripts/serve.sh
    console = server.workdir / "start.log"  # the JVM's stdout: logs/console.log under serve.sh
    sizes = {name: (logs / name).stat().st_size for name in LOGS}
    console_size = console.stat().st_size
    for _ in range(5):
        answer = post(server, packaged_photos()["coffee"], params={"token": SECRET})
        assert answer.status_code == 200, answer.text[:300]
    assert post(server, b"not an image").status_code == 400

    # Every log got its lines, in the log directory ...
    wait_for(lambda: all((logs / n).stat().st_size > sizes[n] for n in LOGS), timeout=30)
    access = (logs / "access_log.log").read_text()
    assert f'"POST /predictions/{MODEL_NAME} HTTP/1.1" 200' in access
    # ... without the query string, in any log or on the console ...
    for path in logs.iterdir():
        assert SECRET not in path.read_text(errors="replace"), path.name
    assert SECRET not in console.read_text(errors="replace")
    # ... and nothing per request on the console (TorchServe's own config: ~2.6 KB a request).
    assert console.stat().st_size == console_size
