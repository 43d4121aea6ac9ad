"""IndexMem modules read back from an IndexMem GGUF (sidecar or merged model) into the torch
modules of ``train/modules.py``: the student then runs exactly the weights the engine runs."""

from __future__ import annotations

from pathlib import Path

import torch

from ...convert import schema as S
from ...convert.reader import load_indexmem
from ..fit import IndexMemModel
from ..modules import IndexMemSizes


def modules_from_file(path: str | Path, base_path: str | Path) -> tuple[IndexMemModel, dict]:
    """(modules of every layer, the file's settings: memory_layers, pool_kernel, budget, tau,
    sinks), checked against the base model as the engine checks it."""
    imf = load_indexmem(path, base_path=base_path)
    meta, sizes = imf.meta, imf.sizes
    model = IndexMemModel(
        int(meta[S.K_BASE_LAYERS]),
        IndexMemSizes(
            d_model=sizes["d_model"],
            n_head=sizes["n_head"],
            d_head=sizes["d_head"],
            n_idx_heads=sizes["n_idx_heads"],
            d_idx=sizes["d_idx"],
            d_mem=sizes["d_mem"],
            norm_eps=float(meta.get(S.K_NORM_EPS, 1e-6)),
            mem_lambda=float(meta.get(S.K_MEM_LAMBDA, 1.0)),
            mem_eta=float(meta.get(S.K_MEM_ETA, 1.0)),
            mem_eps=float(meta.get(S.K_MEM_EPS, 1e-6)),
            mem_combine=meta.get(S.K_MEM_COMBINE, "add"),
        ),
    )
    state = model.state_dict()
    for il in imf.layers:
        for suffix, (param, _) in S.LAYER_TENSORS.items():
            state[param.format(il=il)] = torch.from_numpy(imf.tensors[S.tensor_name(il, suffix)].copy())
    model.load_state_dict(state)
    settings = {
        "layers": list(imf.layers),
        "memory_layers": S.memory_layers_of(meta, imf.layers),
        "pool_kernel": int(meta.get(S.K_POOL, 1)),
        "budget": int(meta.get(S.K_BUDGET, 1024)),
        "tau": int(meta.get(S.K_TAU, 16)),
        "sinks": int(meta.get(S.K_SINKS, 4)),
        "indexer_from": meta.get(S.K_INDEXER_FROM),
    }
    return model, settings
