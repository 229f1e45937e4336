"""The checked-in generated modules must match what the pinned grpcio-tools produces now."""

from __future__ import annotations

from pathlib import Path

from proto.generate import PROTO_FILES, generate, repo_root


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    assert len(generated) >= len(PROTO_FILES) * 2
    stale = [
        str(path)
        for path in generated
        if (repo_root() / path).read_bytes() != (tmp_path / path).read_bytes()
    ]
    assert not stale, f"stale generated code, run `python -m proto.generate`: {stale}"
