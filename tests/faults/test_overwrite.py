"""Issue 19, data loss: --overwrite replaces only what evomerge wrote, killed exports leave no
garbage for long, and unfinished candidates export only when asked to."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge import api
from evomerge.errors import ConfigError, ExportError
from evomerge.merge.materialize import merge_to_dir
from evomerge.merge.writer import (
    HOLD_ENV,
    MANIFEST,
    ModelDirWriter,
    _host_tag,
    remove_stale_temporaries,
    verify_manifest,
)
from evomerge.recipe import recipe_from_dict
from evomerge.result import EvalResult, Status
from evomerge.store import NewCandidate, Store

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 900  # only stops a broken test from hanging forever; no step is timed against it


def _recipe(tiny_models: dict[str, Path], weight: float = 0.5):
    return recipe_from_dict({"merge_method": "linear", "models": [
        {"model": str(tiny_models["expert_a"]), "parameters": {"weight": weight}},
        {"model": str(tiny_models["expert_b"]), "parameters": {"weight": 1 - weight}}]})


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- what --overwrite may replace


def test_overwrite_replaces_an_evomerge_export_atomically(tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_to_dir(_recipe(tiny_models, 0.3), out)
    before = (out / "model.safetensors").read_bytes()
    merge_to_dir(_recipe(tiny_models, 0.7), out, overwrite=True)
    verify_manifest(out)
    assert (out / "model.safetensors").read_bytes() != before
    assert (out / "evomerge-recipe.json").read_text() == _recipe(tiny_models, 0.7).canonical_json() + "\n"
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_directory_holding_a_file_evomerge_did_not_write(tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_to_dir(_recipe(tiny_models), out)
    (out / "notes.txt").write_text("my notes")
    before = _snapshot(out)
    with pytest.raises(ExportError, match=rf"refusing to replace {out}: {out / 'notes.txt'} is not listed in its "
                                          rf"{MANIFEST}") as info:
        merge_to_dir(_recipe(tiny_models, 0.9), out, overwrite=True)
    assert "notes.txt" not in info.value.hint and "choose another --out" in info.value.hint
    assert "\n" not in info.value.message
    assert _snapshot(out) == before and _leftovers(tmp_path) == []
    (out / "notes.txt").unlink()
    merge_to_dir(_recipe(tiny_models, 0.9), out, overwrite=True)  # evomerge's own again: replaced
    verify_manifest(out)


def test_overwrite_refuses_a_parent_directory_and_another_model(tiny_models, tmp_path: Path) -> None:
    parent = tmp_path / "work"
    merge_to_dir(_recipe(tiny_models), parent / "merged")
    (parent / "data.csv").write_text("1,2\n")
    before = _snapshot(parent)
    with pytest.raises(ExportError, match=rf"refusing to replace {parent}: it has no {MANIFEST}") as info:
        merge_to_dir(_recipe(tiny_models), parent, overwrite=True)
    assert info.value.hint
    assert _snapshot(parent) == before
    other = tiny_models["base"]  # a model transformers wrote
    before = _snapshot(other)
    with pytest.raises(ExportError, match=rf"refusing to replace {other}: it has no {MANIFEST}"):
        merge_to_dir(_recipe(tiny_models), other, overwrite=True)
    assert _snapshot(other) == before
    assert _leftovers(tmp_path) == [] and _leftovers(parent) == []


def _fake_export(out: Path, files: dict[str, str]) -> None:
    with ModelDirWriter(out) as w:
        for name, text in files.items():
            w.write_text(name, text)


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda d: (d / MANIFEST).write_text("{not json"), rf"its {MANIFEST} is unreadable"),
    (lambda d: (d / MANIFEST).write_text('{"files": {"a.txt": "x"}}'), rf"its {MANIFEST} is not evomerge's"),
    (lambda d: (d / MANIFEST).write_text(json.dumps({"files": {}, "extra": 1})), "is not evomerge's"),
    (lambda d: (d / MANIFEST).write_text(json.dumps({"files": {"../a.txt": "0" * 64}})), "is not evomerge's"),
    (lambda d: (d / "a.txt").write_text("edited"), r"a.txt changed since evomerge wrote it"),
    (lambda d: (d / "sub").mkdir(), r"sub is not listed in its"),
    (lambda d: (d / ".hidden").write_text("x"), r"\.hidden is not listed in its"),
    (lambda d: ((d / "a.txt").unlink(), (d / "a.txt").mkdir()), r"a.txt is not a regular file"),
    (lambda d: ((d / "a.txt").unlink(), (d / "a.txt").symlink_to(d.parent / "victim.txt")),
     r"a.txt is not a regular file"),
])
def test_overwrite_checks_the_manifest_and_every_entry(tmp_path: Path, damage, needle) -> None:
    out = tmp_path / "out"
    (tmp_path / "victim.txt").write_text("keep")
    _fake_export(out, {"a.txt": "a", "b.txt": "b"})
    damage(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ExportError, match=needle) as info:
        ModelDirWriter(out, overwrite=True)
    assert info.value.hint and str(out) in info.value.message
    assert sorted(p.name for p in out.iterdir()) == before and (tmp_path / "victim.txt").read_text() == "keep"
    assert _leftovers(tmp_path) == []


def test_manifest_that_is_a_symlink_is_not_evomerge_s(tmp_path: Path) -> None:
    _fake_export(tmp_path / "real", {"a.txt": "a"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("a")
    (out / MANIFEST).symlink_to(tmp_path / "real" / MANIFEST)  # borrowed credentials
    with pytest.raises(ExportError, match=rf"it has no {MANIFEST}"):
        ModelDirWriter(out, overwrite=True)
    assert (out / "a.txt").read_text() == "a"


def test_an_empty_directory_holds_nothing_to_lose(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with ModelDirWriter(out, overwrite=True) as w:
        w.write_text("new.txt", "new")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]


def test_a_file_slipped_in_during_the_export_is_not_deleted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _fake_export(out, {"a.txt": "a"})
    with pytest.raises(ExportError, match=rf"{out / 'late.txt'} is not listed"), \
            ModelDirWriter(out, overwrite=True) as w:
        w.write_text("a.txt", "new")
        (out / "late.txt").write_text("written while the export ran")
    assert (out / "late.txt").read_text() == "written while the export ran" and (out / "a.txt").read_text() == "a"
    assert _leftovers(tmp_path) == []


def test_never_the_current_home_or_root_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    _fake_export(out, {"a.txt": "a"})  # replaceable by its contents: only where it is forbids it
    monkeypatch.chdir(out)
    with pytest.raises(ExportError, match=rf"refusing to replace {out}: it is the current directory"):
        ModelDirWriter(".", overwrite=True)
    with pytest.raises(ExportError, match="it is the current directory"):
        ModelDirWriter(out, overwrite=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(out)
    monkeypatch.chdir(tmp_path / "link")  # the same place through a symlink
    with pytest.raises(ExportError, match="it is the current directory"):
        ModelDirWriter(out, overwrite=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(out))
    with pytest.raises(ExportError, match=rf"refusing to replace {out}: it is your home directory") as info:
        ModelDirWriter(out, overwrite=True)
    assert "new directory" in info.value.hint
    nested = tmp_path / "deep" / "er"
    nested.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.chdir(nested)
    with pytest.raises(ExportError, match="it is a parent of the current directory"):
        ModelDirWriter(tmp_path / "deep", overwrite=True)
    with pytest.raises(ExportError, match="cannot export to '/'"):
        ModelDirWriter("/", overwrite=True)
    assert (out / "a.txt").read_text() == "a" and nested.is_dir()
    assert _leftovers(tmp_path) == []


def test_cli_merge_overwrite_refuses_a_parent_directory(tiny_models, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(_recipe(tiny_models).to_yaml())
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    proc = _cli("merge", str(recipe), "--out", str(project), "--overwrite", cwd=tmp_path)
    err = " ".join(proc.stderr.split())  # rich wraps long lines at the terminal width
    assert proc.returncode == 2, proc.stderr
    assert f"error: refusing to replace {project}: it has no {MANIFEST}" in err and "fix:" in err
    assert "Traceback" not in proc.stderr
    assert (project / "thesis.tex").read_text() == "years of work" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- the zoo


def test_zoo_overwrite_replaces_only_a_zoo(tmp_path: Path) -> None:
    from evomerge.zoo_scaled import ScaledShape, build_scaled_zoo

    shape = ScaledShape(64, 128, 1, 4, 4, 96)
    d = tmp_path / "zoo"
    build_scaled_zoo(d, shape, experts=1, log=None)
    listed = json.loads((d / "zoo.json").read_text())["files"]
    assert "base/model.safetensors" in listed and "expert_0/config.json" in listed and "zoo.json" not in listed
    (d / "base" / "my_finetune.safetensors").write_text("precious")
    with pytest.raises(ConfigError, match=rf"refusing to replace {d}: {d / 'base/my_finetune.safetensors'} is not "
                                          "a file of the zoo"):
        build_scaled_zoo(d, shape, experts=1, overwrite=True, log=None)
    assert (d / "base" / "my_finetune.safetensors").read_text() == "precious"
    (d / "base" / "my_finetune.safetensors").unlink()
    build_scaled_zoo(d, shape, experts=1, seed=1, overwrite=True, log=None)
    assert json.loads((d / "zoo.json").read_text())["seed"] == 1
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match=rf"refusing to replace {project}: it has no zoo.json listing its files"):
        build_scaled_zoo(project, shape, experts=1, overwrite=True, log=None)
    assert (project / "notes.txt").read_text() == "keep" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- stale temporaries


def test_temporaries_name_their_owner(tmp_path: Path) -> None:
    with ModelDirWriter(tmp_path / "out") as w:
        assert w.tmp.name.startswith(f".out.tmp-{_host_tag()}-{os.getpid()}-")


def test_stale_temporary_rules(tmp_path: Path) -> None:
    host, dead, alive = _host_tag(), _dead_pid(), os.getppid()
    made = {}
    for key, name in {
        "dead_tmp": f".a.tmp-{host}-{dead}-0123456789ab",
        "dead_old_done": f".b.old-{host}-{dead}-0123456789ab",  # b exists: its replacement was published
        "dead_old_cut": f".c.old-{host}-{dead}-0123456789ab",  # c is missing: the owner died mid-swap
        "alive_tmp": f".d.tmp-{host}-{alive}-0123456789ab",
        "mine": f".e.tmp-{host}-{os.getpid()}-0123456789ab",
        "other_host": f".f.tmp-not-{host}-{dead}-0123456789ab",
        "legacy": ".g.tmp-0123456789ab",
        "bad_suffix": f".h.tmp-{host}-{dead}-0123456789zz",
        "user": f"i.tmp-{host}-{dead}-0123456789ab",
    }.items():
        made[key] = tmp_path / name
        made[key].mkdir()
        (made[key] / "f").write_text(key)
    (tmp_path / "b").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "f").write_text("keep")
    link = tmp_path / f".j.tmp-{host}-{dead}-0123456789ab"
    link.symlink_to(tmp_path / "victim")
    plain = tmp_path / f".k.tmp-{host}-{dead}-0123456789ab"
    plain.write_text("a file, not a temporary directory")

    handled = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in handled) == sorted(made[k].name for k in ("dead_tmp", "dead_old_done", "dead_old_cut"))
    assert not made["dead_tmp"].exists() and not made["dead_old_done"].exists()
    assert (tmp_path / "c" / "f").read_text() == "dead_old_cut"  # restored, not deleted
    for key in ("alive_tmp", "mine", "other_host", "legacy", "bad_suffix", "user"):
        assert (made[key] / "f").read_text() == key, key
    assert link.is_symlink() and (tmp_path / "victim" / "f").read_text() == "keep" and plain.is_file()


def _popen_cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    full = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **env)
    return subprocess.Popen([sys.executable, "-m", "evomerge.cli", *args], cwd=cwd, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = _popen_cli(*args, cwd=cwd)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _held(proc: subprocess.Popen, marker: Path) -> dict:
    """Wait until the export announces it is holding mid-write (or fail if it ended first)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"export ended (status {proc.returncode}) before holding: {out}{err}")
        if time.monotonic() > deadline:
            pytest.fail("export never reached its first tensor")
        time.sleep(0.05)
    return json.loads(marker.read_text())


def _archive(tmp_path: Path, tiny_models) -> str:
    """A run 'r' whose candidate 0 is COMPLETE and 1..5 are FAILED, INVALID, TIMEOUT, RUNNING, PENDING."""
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    recipe = _recipe(tiny_models)
    with Store.open(url) as store:
        run = store.create_run(name="r", space_yaml="name: r\n", space_hash="h", config={}, seed=0, budget=6,
                               objectives=[{"name": "a", "direction": "maximize", "weight": 1.0}])
        lease = store.acquire_lease(run.id, "test", 60)
        store.add_candidates(lease, [NewCandidate(i, 0, recipe.canonical_json(), recipe.recipe_id, [0.5], ())
                                     for i in range(6)])
        for i, status in enumerate([Status.COMPLETE, Status.FAILED, Status.INVALID, Status.TIMEOUT]):
            attempt = store.claim(lease, i, "w")
            done = status == Status.COMPLETE
            store.complete(lease, i, attempt, EvalResult(status=status, objectives={"a": 1.0} if done else None,
                                                         seconds=1.0, error=None if done else "boom"),
                           fitness=1.0 if done else None)
        store.claim(lease, 4, "w")
        store.release_lease(lease)
    return url


def test_a_killed_export_leaves_temporaries_the_next_export_removes(tiny_models, tmp_path: Path) -> None:
    db = _archive(tmp_path, tiny_models)
    parent = tmp_path / "exports"
    parent.mkdir()
    procs: list[subprocess.Popen] = []
    try:
        killed = _popen_cli("export", "r:0", "--out", str(parent / "out"), "--db", db, cwd=tmp_path,
                            **{HOLD_ENV: str(tmp_path / "killed.json")})
        procs.append(killed)
        held = _held(killed, tmp_path / "killed.json")
        stale = Path(held["tmp"])
        assert held["pid"] == killed.pid and stale.parent == parent
        assert stale.name.startswith(f".out.tmp-{_host_tag()}-{killed.pid}-")
        assert (stale / "model.safetensors").stat().st_size > 0  # mid-write: a shard begun ...
        assert not (stale / MANIFEST).exists()  # ... and no manifest yet
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
        assert killed.returncode == -signal.SIGKILL
        assert stale.is_dir() and not (parent / "out").exists()  # what a SIGKILL leaves behind

        live = _popen_cli("export", "r:0", "--out", str(parent / "other"), "--db", db, cwd=tmp_path,
                          **{HOLD_ENV: str(tmp_path / "live.json")})
        procs.append(live)
        live_tmp = Path(_held(live, tmp_path / "live.json")["tmp"])
        legacy = parent / ".out.tmp-0123456789ab"  # no owner in its name: never touched
        legacy.mkdir()
        foreign = parent / f".out.tmp-elsewhere-{killed.pid}-0123456789ab"
        foreign.mkdir()
        (parent / "mine").mkdir()

        assert api.export("r:0", parent / "out", db=db) == parent / "out"
        verify_manifest(parent / "out")
        assert not stale.exists()
        assert live_tmp.is_dir() and (live_tmp / "model.safetensors").exists()  # its owner still runs
        assert legacy.is_dir() and foreign.is_dir() and (parent / "mine").is_dir()

        live.send_signal(signal.SIGKILL)
        live.communicate()
        api.export("r:0", parent / "third", db=db)
        assert not live_tmp.exists() and not (parent / "other").exists()
        assert sorted(p.name for p in parent.iterdir()) == sorted([legacy.name, foreign.name, "mine", "out", "third"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


# ---------------------------------------------------------------- unfinished candidates


@pytest.mark.parametrize(("index", "status"), [(1, "FAILED"), (2, "INVALID"), (3, "TIMEOUT"), (4, "RUNNING"),
                                               (5, "PENDING")])
def test_unfinished_candidates_export_only_with_any_status(tiny_models, tmp_path: Path, index: int,
                                                           status: str) -> None:
    db = _archive(tmp_path, tiny_models)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=rf"candidate r:{index} is {status}, not COMPLETE") as info:
        api.export(f"r:{index}", out, db=db)
    assert "--any-status" in info.value.hint and "any_status=True" in info.value.hint
    assert not out.exists() and _leftovers(tmp_path) == []
    api.export(f"r:{index}", out, db=db, any_status=True)
    verify_manifest(out)


def test_complete_candidates_export_as_before_and_the_cli_names_the_flag(tiny_models, tmp_path: Path) -> None:
    db = _archive(tmp_path, tiny_models)
    api.export("r:0", tmp_path / "ok", db=db)
    verify_manifest(tmp_path / "ok")
    proc = _cli("export", "r:1", "--out", str(tmp_path / "bad"), "--db", db, cwd=tmp_path)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "error: candidate r:1 is FAILED, not COMPLETE; refusing to export it" in err
    assert "--any-status" in err and "Traceback" not in proc.stderr
    assert not (tmp_path / "bad").exists()
    proc = _cli("export", "r:1", "--out", str(tmp_path / "bad"), "--db", db, "--any-status", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    verify_manifest(tmp_path / "bad")
