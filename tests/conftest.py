"""Shared fixtures: tiny random HF checkpoints of each supported family, saved with save_pretrained, and a
check after every test that it left nothing of traceinfer's running."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref

import psutil
import pytest
import torch

from traceinfer.engine.hooks import Hooks

# every Hooks object made during the tests, to check that none keeps a subscriber after a test
_HOOKS: weakref.WeakSet = weakref.WeakSet()
_hooks_init = Hooks.__init__


def _tracked_init(self, *args, **kwargs) -> None:
    _hooks_init(self, *args, **kwargs)
    _HOOKS.add(self)


Hooks.__init__ = _tracked_init


def _helper_processes() -> dict[int, str]:
    """Child processes running one of traceinfer's helper scripts (the encoder, the sampler process)."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "traceinfer" in cmdline and child.status() != psutil.STATUS_ZOMBIE:
            found[child.pid] = cmdline
    return found


def _ours(callback) -> bool:
    """A function or bound method defined in traceinfer (other libraries' gc callbacks are theirs to keep)."""
    owner = getattr(callback, "__self__", callback)
    module = getattr(callback, "__module__", None) or type(owner).__module__
    return module.startswith("traceinfer") or type(owner).__module__.startswith("traceinfer")


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Fail a test that leaves a hook subscribed, a gc callback, a ``traceinfer-*`` thread or a helper
    process behind (and clean up after it, so the next test starts clean)."""
    callbacks = list(gc.callbacks)
    helpers = set(_helper_processes())
    yield
    problems = []
    for hooks in list(_HOOKS):
        if hooks.subscribed():
            problems.append(f"hooks still subscribed: {hooks.subscribed()}")
            for name in hooks.subscribed():
                hooks.point(name)._subscribers.clear()
    added = [cb for cb in gc.callbacks if cb not in callbacks and _ours(cb)]
    if added:
        problems.append(f"gc callbacks left: {added}")
        for cb in added:
            gc.callbacks.remove(cb)
    threads = [t.name for t in threading.enumerate() if t.name.startswith("traceinfer-")]
    if threads:
        problems.append(f"threads alive: {threads}")
    left = {pid: cmd for pid, cmd in _helper_processes().items() if pid not in helpers}
    if left:
        problems.append(f"helper processes alive: {sorted(left.values())}")
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
    if problems:
        pytest.fail("the test left traceinfer running: " + "; ".join(problems))

ARCHS = ("qwen3", "qwen2", "llama")

_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=1024, rms_norm_eps=1e-6,
    eos_token_id=None, bos_token_id=None, pad_token_id=None,
)  # fmt: skip


def hf_config(arch: str):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    if arch == "qwen3":
        return Qwen3Config(head_dim=16, tie_word_embeddings=True, architectures=["Qwen3ForCausalLM"], **_COMMON)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=False, architectures=["Qwen2ForCausalLM"], **_COMMON)
    if arch == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 128}  # fmt: skip
        return LlamaConfig(head_dim=16, rope_parameters=rope, architectures=["LlamaForCausalLM"], **_COMMON)
    raise ValueError(arch)


def build_hf_model(arch: str, seed: int = 0):
    """A random model whose weights have a wide spread (std 0.4), so greedy choices are never near-ties."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.4)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """arch -> (directory with config.json + safetensors, the HF model)."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            model = build_hf_model(arch)
            path = tmp_path_factory.mktemp(f"hf-{arch}")
            model.save_pretrained(path)
            cache[arch] = (path, model)
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def prompts():
    """Mixed-length prompts of random token ids (vocab 512)."""
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, 512, (n,), generator=g).tolist() for n in (5, 17, 33, 48, 64, 1, 16)]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium, for the tests of our HTML and SVG (skips, saying why, without it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("browser tests need chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
