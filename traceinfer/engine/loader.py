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

    file = path / "config.json"
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # which errors depends on the version (5.x: huggingface_hub's strict dataclass errors)
        raise ModelLoadError(f"{file} cannot be read by transformers: {one_line(exc)}") from exc
    model_class(config)  # fails early, naming the supported architectures
    limit = getattr(config, "max_position_embeddings", None)  # the engine bounds max_model_len by it before the build
    if not isinstance(limit, int) or limit < 1:
        raise ModelLoadError(f"{file} must give max_position_embeddings as an integer >= 1, got {limit!r}")
    return config


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (transformers' and torch's span several)."""
    return " ".join(str(exc).split())


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
    from safetensors import SafetensorError, safe_open

    params = dict(model.named_parameters())
    filled: set[str] = set()
    for file in safetensors_files(path):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    done = model.load_weight(name, f.get_tensor(name), params)
                    if done:
                        filled.add(done)
        except (SafetensorError, OSError) as exc:  # truncated, overwritten, unreadable
            raise ModelLoadError(f"{file} is not a readable safetensors file: {one_line(exc)}") from exc
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
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a field missing or of the wrong kind
        source = model if synthetic else path / "config.json"
        if isinstance(exc, AttributeError) and exc.obj is config:
            found = f"it has no field {exc.name!r}"
        else:
            found = f"{type(exc).__name__}: {one_line(exc)}"
        message = f"{source} (model_type {config.model_type!r}) does not fit {cls.__name__}: {found}"
        raise ModelLoadError(message) from exc
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
