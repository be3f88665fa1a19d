"""The converted-model cache under concurrency, kills and damage. The GGUF de-quantization itself is
replaced by a copy of a tiny model (the real one takes a minute); locking, assembly, manifests, sweeping
and reconversion are the real code."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

DRIVER = textwrap.dedent("""
    import json, os, shutil, sys, time
    from pathlib import Path
    from pytest_factedit.model import cache, embedded
    from pytest_factedit.model.spec import resolve

    setup = json.loads(sys.argv[1])
    embedded.EMBEDDED_SHA256, embedded.EMBEDDED_SIZE = setup["sha256"], setup["size"]
    embedded.embedded_chunk_paths = lambda: [Path(p) for p in setup["chunks"]]

    def fake_dequantize(gguf_path, out):
        for _ in range(int(setup["delay"] * 10)):  # the GGUF must stay in place all along
            assert gguf_path.is_file(), "the GGUF being read was deleted"
            time.sleep(0.1)
        for item in Path(setup["model"]).iterdir():
            shutil.copy(item, out / item.name)

    cache.dequantize = fake_dequantize
    folder, seconds, weights = cache.converted_dir(resolve(None))
    print(json.dumps({"folder": str(folder), "converted": seconds is not None, "weights": weights}))
""")


@pytest.fixture
def fake_embedded(tmp_path: Path, tiny_model_dir) -> dict:
    """Four small chunk files standing in for the embedded GGUF, and where the cache goes."""
    chunks = []
    for i in range(4):
        chunk = tmp_path / f"part{i}"
        chunk.write_bytes(os.urandom(1000))
        chunks.append(str(chunk))
    whole = b"".join(Path(c).read_bytes() for c in chunks)
    return {
        "chunks": chunks,
        "sha256": hashlib.sha256(whole).hexdigest(),
        "size": len(whole),
        "model": str(tiny_model_dir[0]),
        "delay": 0,
        "cache": str(tmp_path / "cache"),
    }


def convert(setup: dict, delay: float = 0) -> subprocess.Popen:
    env = {**os.environ, "FACTEDIT_CACHE": setup["cache"]}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps({**setup, "delay": delay})],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> tuple[dict, str]:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-1500:]
    return json.loads(out.strip().splitlines()[-1]), err


def safetensors_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        digest.update(f"{path.name}:{hashlib.sha256(path.read_bytes()).hexdigest()};".encode())
    return digest.hexdigest()


def test_two_first_conversions_at_once_both_succeed(fake_embedded) -> None:
    first, second = convert(fake_embedded, delay=2), convert(fake_embedded, delay=2)
    (a, _), (b, _) = finished(first), finished(second)
    assert a["folder"] == b["folder"] and sorted([a["converted"], b["converted"]]) == [False, True]
    assert a["weights"] == b["weights"] == safetensors_hash(Path(a["folder"]))


def test_a_damaged_cache_is_converted_again_and_the_user_is_told(fake_embedded) -> None:
    first, _ = finished(convert(fake_embedded))
    weights = next(Path(first["folder"]).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, as a killed copy or a full disk leaves it
    again, err = finished(convert(fake_embedded))
    assert again["converted"] and "converting gemma3-270m again" in err and "damaged" in err
    assert again["weights"] == first["weights"] == safetensors_hash(Path(again["folder"]))
    quiet, err = finished(convert(fake_embedded))
    assert not quiet["converted"] and "again" not in err


def test_what_a_killed_conversion_left_is_swept(fake_embedded) -> None:
    cache = Path(fake_embedded["cache"])
    staging = cache / f".gemma3-270m-{fake_embedded['sha256'][:16]}.abcd1234"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"0" * 1000)
    (cache / "gguf").mkdir()
    leftovers = [cache / "gguf" / "4242-gemma-3-270m-q4_k_m.gguf", cache / "gguf" / ".x.gguf.4242.tmp"]
    for path in leftovers:
        path.write_bytes(b"0" * 1000)
    keep = cache / "gguf" / "mine.txt"
    keep.write_text("not ours to delete")
    finished(convert(fake_embedded))
    assert not staging.exists() and not any(p.exists() for p in leftovers) and keep.exists()


def test_the_converted_folder_is_readable_by_others(fake_embedded) -> None:
    old = os.umask(0o022)
    try:
        result, _ = finished(convert(fake_embedded))
    finally:
        os.umask(old)
    folder = Path(result["folder"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}


def test_the_sweep_leaves_a_users_own_ggufs_alone(fake_embedded) -> None:
    """Only the names a conversion makes are swept from gguf/: `<pid>-<embedded file>` and its temp file."""
    gguf = Path(fake_embedded["cache"]) / "gguf"
    gguf.mkdir(parents=True)
    leftover = gguf / "4242-gemma-3-270m-q4_k_m.gguf"
    mine = [gguf / "2024-my-model.gguf", gguf / "7-llama-3.2-1b-q4_k_m.gguf", gguf / "model.gguf"]
    for path in [leftover, *mine]:
        path.write_bytes(b"0" * 1000)
    finished(convert(fake_embedded))
    assert not leftover.exists() and all(path.read_bytes() == b"0" * 1000 for path in mine)
