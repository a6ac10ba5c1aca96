"""Item subsets with estimated scores in a search (issue 16): a candidate is scored on a subset of
each task's items, its full-set objectives estimated from the archive's exactly scored
candidates (random, anchor, IRT), and promoted to every item when its estimate enters the top k
or the Pareto front. Local backend, synthetic evaluator over tiny real checkpoints (the plumbing;
tests/unit/test_estimate.py tests the estimators)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evomerge import api
from tests.service.helpers import archive, write_space

ITEMS = 400  # zoo_add and zoo_caesar dev splits, 200 items each


def quiet(_m: str) -> None:
    pass


@pytest.mark.parametrize("method", ["random", "anchor", "irt"])
def test_random_search_on_subsets_spends_fewer_items_and_finds_the_same_best(tiny_sources: Path, tmp_path: Path,
                                                                            method: str) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    subset = f"fitness: {{subset: {{method: {method}, size: 20, warmup: 6, refit: 4, promote: 3}}}}\n"
    full = write_space(tmp_path, tiny_sources, strategy="random", budget=30, name="full")
    cheap = write_space(tmp_path, tiny_sources, strategy="random", budget=30, name="cheap", extra=subset)
    api.search(full, db=db, engine="synthetic", backend="local", name="full", log=quiet)
    api.search(cheap, db=db, engine="synthetic", backend="local", name="cheap", log=quiet)
    a, b = archive(db, "full"), archive(db, "cheap")
    assert [r[2] for r in a] == [r[2] for r in b]  # random search: the same candidates
    assert all(r[5] == "exact" for r in b[:6])  # the warm-up is scored on every item
    estimated = [r for r in b if r[5] == "subset"]
    # 20 items per task (anchor and irt: fewer when items score alike on every candidate so far)
    assert estimated and all(0 < r[6] <= 40 for r in estimated) and (method != "random" or
                                                                     all(r[6] == 40 for r in estimated))
    assert sum(r[6] for r in b) < 0.75 * len(b) * ITEMS
    # the best is found, scored exactly (promoted), and best/pareto report exact candidates first
    assert api.best("cheap", db=db)[0]["recipe_id"] == api.best("full", db=db)[0]["recipe_id"]
    assert api.best("cheap", db=db)[0]["fitness"] == api.best("full", db=db)[0]["fitness"]
    assert all(r["fidelity"] == "exact" for r in api.best("cheap", db=db, k=3))
    assert all(r["fidelity"] == "exact" for r in api.pareto("cheap", db=db))
    truth = {r[0]: r[3] for r in a}
    for r in estimated:
        d = api.show(f"cheap:{r[0]}", db=db)
        assert d["stop_reason"].startswith(f"estimated from {r[6]} of 400 items") and method in d["stop_reason"]
        scored = {t: [v for v in s if not math.isnan(v)] for t, s in d["item_scores"].items()}
        assert sum(map(len, scored.values())) == r[6] and all(len(s) == 200 for s in d["item_scores"].values())
        for task, (lo, hi) in d["intervals"].items():
            assert lo <= d["objectives"][task] <= hi
        assert r[3] < truth[r[7]] + 0.25  # below the cut it was compared with (estimates err a little)
    reasons = [api.show(f"cheap:{r[0]}", db=db)["stop_reason"] or "" for r in b if r[5] == "exact"]
    assert any(x.startswith("promoted after") for x in reasons)  # estimated, then scored fully
    # an estimate is close to the truth on this easy problem (the synthetic scores)
    errors = [abs(r[3] - truth[r[0]]) for r in estimated]
    assert sum(errors) / len(errors) < 0.2


def test_racing_and_subsets_together_are_refused(tiny_sources: Path, tmp_path: Path) -> None:
    from evomerge.errors import ConfigError

    both = write_space(tmp_path, tiny_sources, extra="fitness: {racing: {chunk: 20}, subset: {size: 10}}\n")
    with pytest.raises(ConfigError, match="racing and subset are two ways to score fewer items; choose one"):
        api.validate(both)
