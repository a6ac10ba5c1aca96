"""Merge math, safe model IO and materialization of recipes.

Floors, top to bottom: a module imports only modules listed below it (inside functions too).

    materialize     executes a plan: merge_into (live weights), merge_to_dir (an export)
    plan            recipe -> tensor jobs, checked against the sources' headers
    registry        op specs by name
    ops             the merge ops
    sparsify        exact magnitude rank cuts
    rank_index      rank indexes of resident sources
    kernels         the fused per-entry merge formula (torch.compile / eager)
    native          its C++ build (native_merge.cpp)
    compat, writer  header checks; the atomic streaming writer
    io              safe safetensors reading

Per-layer values (:mod:`evomerge.schedule`) and recipes sit below the package, on the ground floor.
"""
