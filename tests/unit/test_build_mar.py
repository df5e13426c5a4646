"""scripts/build_mar.py --if-stale: an archive equal to handler/ is kept, any difference rebuilt."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from saliency_tools import archive as build_mar


def archive(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as mar:
        for name, data in members.items():
            mar.writestr(name, data)
    return path


def current_members() -> dict[str, bytes]:
    members = {name: file.read_bytes() for name, file in build_mar.handler_files().items()}
    return members | {"index_to_name.json": b"{}", "MAR-INF/MANIFEST.json": b"{}"}


def test_an_archive_of_the_working_tree_is_current(tmp_path: Path) -> None:
    assert build_mar.stale_files(archive(tmp_path / "a.mar", current_members())) == []


def test_a_changed_missing_or_removed_module_makes_it_stale(tmp_path: Path) -> None:
    members = current_members()
    changed = members | {"saliency_service/pipeline.py": b"# an older pipeline\n"}
    assert build_mar.stale_files(archive(tmp_path / "changed.mar", changed)) == [
        "saliency_service/pipeline.py"
    ]
    missing = {k: v for k, v in members.items() if k != "model-config.yaml"}
    assert build_mar.stale_files(archive(tmp_path / "missing.mar", missing)) == [
        "model-config.yaml"
    ]
    removed = members | {"saliency_service/old_module.py": b"x = 1\n"}
    assert build_mar.stale_files(archive(tmp_path / "removed.mar", removed)) == [
        "saliency_service/old_module.py"
    ]


def test_every_python_file_of_the_package_is_compared() -> None:
    names = build_mar.handler_files()
    assert "saliency_service/methods/registry.py" in names
    assert "saliency_service/attribution/gradcam.py" in names


def test_a_variant_archive_changes_the_named_settings_only(tmp_path: Path) -> None:
    yaml = (
        "batchSize: 8\nhandler:\n  max_steps: 256\n  sampled_model: squeezenet_saliency_sampled\n"
    )
    source = tmp_path / "source" / "squeezenet_saliency.mar"
    source.parent.mkdir()
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("model-config.yaml", yaml)
        archive.writestr("saliency_handler.py", "# handler\n")
    variant = build_mar.variant_archive(tmp_path / "store", source, batchSize=1, sampled_model='""')
    with zipfile.ZipFile(variant) as archive:
        assert archive.read("model-config.yaml").decode() == (
            'batchSize: 1\nhandler:\n  max_steps: 256\n  sampled_model: ""\n'
        )
        assert archive.read("saliency_handler.py") == b"# handler\n"
    with pytest.raises(ValueError, match="no single maxWorkers"):
        build_mar.variant_archive(tmp_path / "other", source, maxWorkers=2)
