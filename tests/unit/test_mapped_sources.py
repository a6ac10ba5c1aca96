"""Sources mapped once per node (issue 20, evomerge/evaluate/resident.py): resident tensors are
views of the safetensors files' pages, equal to private reads; a file changed or truncated under
a run is refused before any tensor is touched (not a SIGBUS); what cannot be mapped is read."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from evomerge.errors import CorruptArtifactError
from evomerge.evaluate.resident import ResidentModel, ResidentSources
from evomerge.merge.io import SafetensorsFile


def file_regions(path: Path) -> list[tuple[int, int]]:
    """The address ranges this process maps from ``path`` (/proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5] == str(path.resolve()):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def test_mapped_tensors_equal_private_reads_and_live_in_the_files_pages(tiny_models: dict[str, Path]) -> None:
    mapped, private = ResidentModel(tiny_models["expert_a"]), ResidentModel(tiny_models["expert_a"], mapped=False)
    assert mapped.tensor_names == private.tensor_names
    for name in mapped.tensor_names:
        assert torch.equal(mapped.read(name), private.read(name)), name
    regions = file_regions(tiny_models["expert_a"] / "model.safetensors")
    assert regions  # the file is mapped, and every mapped tensor's bytes are inside that mapping
    for name in mapped.tensor_names:
        ptr = mapped.read(name).data_ptr()
        assert any(lo <= ptr < hi for lo, hi in regions), name
        assert not any(lo <= private.read(name).data_ptr() < hi for lo, hi in regions), name


def test_a_write_to_a_mapped_tensor_copies_its_pages_and_never_reaches_the_file(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["base"]
    before = (path / "model.safetensors").read_bytes()
    model = ResidentModel(path)
    model.read(model.tensor_names[0]).add_(1.0)  # merge ops never do this; if one did, the file is safe
    assert (path / "model.safetensors").read_bytes() == before
    assert torch.equal(ResidentModel(path).read(model.tensor_names[0]),
                       ResidentModel(path, mapped=False).read(model.tensor_names[0]))


@pytest.mark.parametrize("change", ["truncate", "rewrite", "replace", "delete"])
def test_a_source_changed_under_a_run_is_refused_before_its_pages_are_read(tiny_models: dict[str, Path],
                                                                           change: str) -> None:
    """In a child process (a SIGBUS would kill it, not the test run): map the sources, change the
    file, then ask for the recipe's sources again and merge: one clear error, exit 0."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from evomerge.errors import CorruptArtifactError
        from evomerge.evaluate.resident import ResidentSources
        src = ResidentSources()
        names = [{str(tiny_models["base"])!r}, {str(tiny_models["expert_a"])!r}]
        models = src.for_recipe(names)
        first = sum(float(models[n].read(t).sum()) for n in names for t in models[n].tensor_names)
        f = Path(names[1]) / "model.safetensors"
        change = {change!r}
        time.sleep(0.01)  # a new mtime on file systems with coarse timestamps
        if change == "truncate":
            os.truncate(f, f.stat().st_size // 2)
        elif change == "rewrite":
            data = bytearray(f.read_bytes()); data[-1] ^= 1; f.write_bytes(bytes(data))
        elif change == "replace":
            tmp = f.with_suffix(".new"); tmp.write_bytes(f.read_bytes()); os.replace(tmp, f)
        else:
            f.unlink()
        try:
            models = src.for_recipe(names)
        except CorruptArtifactError as err:
            print("REFUSED", err.message)
            sys.exit(0)
        print("NOT REFUSED", sum(float(models[n].read(t).sum()) for n in names for t in models[n].tensor_names))
        sys.exit(3)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr[-2000:])
    word = {"truncate": "was truncated", "rewrite": "was changed", "replace": "was changed",
            "delete": "is gone"}[change]
    assert "REFUSED" in out.stdout and word in out.stdout and "model.safetensors" in out.stdout, out.stdout


def test_an_unaligned_tensor_is_read_privately_not_mapped(tmp_path: Path) -> None:
    """safetensors writers align the data section; a file whose header length leaves a float32
    tensor at an odd address is still valid, and gets a private, aligned copy."""
    values = torch.arange(6, dtype=torch.float32)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()
    header += b" " * ((-len(header)) % 8 + 1)  # 8 + len(header) is odd
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + values.numpy().tobytes())
    f = SafetensorsFile(path)
    t = f.map("w")
    assert torch.equal(t, values.reshape(2, 3)) and not file_regions(path)  # read, never mapped
    f.verify()  # nothing mapped: nothing to check


def test_resident_sources_verify_every_source_of_a_recipe(tiny_models: dict[str, Path]) -> None:
    src = ResidentSources()
    names = [str(tiny_models["base"]), str(tiny_models["expert_b"])]
    src.for_recipe(names)
    os.truncate(Path(names[1]) / "model.safetensors", 16)  # nothing read after: no SIGBUS here
    with pytest.raises(CorruptArtifactError, match="was truncated while a run had it mapped"):
        src.for_recipe(names)
    private = ResidentSources(mapped=False)
    private.for_recipe([names[0]])  # private copies: nothing to verify, nothing can fault
