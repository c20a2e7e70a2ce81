"""Model loading: HF config + safetensors weights (sharded or not), or an embedded synthetic model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from traceinfer.engine.models import CausalLM, model_class
from traceinfer.engine.synthetic import init_synthetic_weights, is_synthetic, synthetic_config
from traceinfer.engine.tokenizer import load_tokenizer
from traceinfer.errors import ModelLoadError


@dataclass
class LoadedModel:
    model: CausalLM
    hf_config: object
    tokenizer: object
    eos_token_ids: frozenset[int]
    synthetic: bool
    label: str  # how outputs name the model, e.g. "synthetic:tiny (synthetic random weights)"


def load_hf_config(model: str):
    if is_synthetic(model):
        return synthetic_config(model)
    path = Path(model)
    if not path.is_dir():
        raise ModelLoadError(f"model {model!r} is neither a directory nor a synthetic:NAME model")
    if not (path / "config.json").exists():
        raise ModelLoadError(f"model directory {path} has no config.json")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as exc:
        raise ModelLoadError(f"config.json in {path} cannot be read by transformers: {exc}") from exc
    model_class(config)  # fails early, naming the supported architectures
    return config


def safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{index.name} names shards that are missing in {path}: {', '.join(missing)}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"model directory {path} has no *.safetensors weights")
    return files


@torch.no_grad()
def load_weights(model: CausalLM, path: Path) -> None:
    from safetensors import safe_open

    params = dict(model.named_parameters())
    filled: set[str] = set()
    for file in safetensors_files(path):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in f.keys():
                done = model.load_weight(name, f.get_tensor(name), params)
                if done:
                    filled.add(done)
    missing = sorted(model.expected_weights() - filled)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"weights in {path} lack {len(missing)} tensors: {shown}")


def eos_ids(config, path: Path | None) -> frozenset[int]:
    ids: set[int] = set()
    sources = [getattr(config, "eos_token_id", None)]
    if path is not None and (path / "generation_config.json").exists():
        sources.append(json.loads((path / "generation_config.json").read_text()).get("eos_token_id"))
    for eos in sources:
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return frozenset(ids)


def load_model(
    model: str, config, backend, dtype: torch.dtype, device: torch.device, max_positions: int, seed: int = 0
) -> LoadedModel:
    """Build the model for ``config`` (from load_hf_config) and fill its weights."""
    cls = model_class(config)
    synthetic = is_synthetic(model)
    path = None if synthetic else Path(model)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in the serving dtype; RoPE tables ask for float32
    try:
        with torch.device(device):
            net = cls(config, backend, max_positions)
    finally:
        torch.set_default_dtype(previous)
    if synthetic:
        init_synthetic_weights(net, seed)
    else:
        load_weights(net, path)
    net.eval()
    label = f"{model} (synthetic random weights)" if synthetic else str(path)
    return LoadedModel(
        model=net,
        hf_config=config,
        tokenizer=load_tokenizer(path, config.vocab_size),
        eos_token_ids=eos_ids(config, path),
        synthetic=synthetic,
        label=label,
    )
