"""VirNucPro's MLP classifier and a loader that reads its `.pth` files without running pickled code.

The shipped models are whole modules pickled with ``torch.save(model)`` from a script, so the pickle
names ``__main__.MLPClassifier``. Unpickling that normally imports and runs whatever the file names;
here the pickle is read by torch's weights-only unpickler with the few expected class names mapped to
inert stand-ins (see ``_PickledModule``), the tensors are copied out of those stand-ins into a fresh
``MLPClassifier``, and the unpickled objects are dropped.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from virnuc_hpc.outputs.calls import NUM_CLASSES
from virnuc_hpc.errors import ModelFileError, ModelNotFoundError

INPUT_DIM = 3328  # [DNABERT-S 768 | ESM-2 2560]


class MLPClassifier(nn.Module):
    """VirNucPro's classifier; attribute names match the original so state-dict keys are identical."""

    def __init__(self, input_dim: int = INPUT_DIM, hidden_dim: int = 512, num_class: int = NUM_CLASSES):
        super().__init__()
        self.hidden_layer = nn.Linear(input_dim, hidden_dim)
        self.bn1 = nn.BatchNorm1d(hidden_dim)
        self.dropout = nn.Dropout(0.5)
        self.output_layer = nn.Linear(hidden_dim, num_class)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hidden_layer(x)
        x = self.bn1(x)
        x = F.relu(x)
        x = self.dropout(x)
        return self.output_layer(x)


class Classifier:
    """A loaded classifier in eval mode, plus where it came from (path and SHA-256, for provenance)."""

    def __init__(self, model: MLPClassifier, path: Path, sha256: str, device: torch.device):
        self.model = model.to(device).eval()
        self.path = path
        self.sha256 = sha256
        self.device = device
        self.input_dim = model.hidden_layer.in_features
        self.hidden_dim = model.hidden_layer.out_features

    def _logits(self, features: np.ndarray) -> torch.Tensor:
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.input_dim:
            raise ValueError(f"expected features of shape (N, {self.input_dim}), got {features.shape}")
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            return self.model(x).float()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Softmax probabilities (N, 2) in float32: column 0 = P(others), column 1 = P(virus)."""
        return torch.softmax(self._logits(features), dim=1).cpu().numpy()

    def __repr__(self) -> str:
        return f"Classifier({str(self.path)!r}, hidden_dim={self.hidden_dim}, sha256={self.sha256[:12]}…)"


# --- safe loading -------------------------------------------------------------------------------


class _PickledModule:
    """Inert stand-in for an allowlisted nn.Module class named in a pickle.

    The weights-only unpickler may create it without __init__ (NEWOBJ) and hand it its attribute
    dict (BUILD -> __setstate__); nothing else. Calling it (REDUCE) is refused, so a file cannot make
    us construct real modules of arbitrary size, and no nn.Module code (hooks, __setstate__) runs on
    data from the file.
    """

    kind = "module"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError(f"a pickled {self.kind} may not be built by calling its class")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            kind = type(state).__name__
            raise pickle.UnpicklingError(f"unexpected state for a pickled {self.kind}: {kind}")
        self.state = state


class _PickledMLP(_PickledModule):
    kind = "MLPClassifier"


class _PickledLinear(_PickledModule):
    kind = "Linear"


class _PickledBatchNorm1d(_PickledModule):
    kind = "BatchNorm1d"


class _PickledDropout(_PickledModule):
    kind = "Dropout"


class _PickledReLU(_PickledModule):
    kind = "ReLU"


# Module names under which the original's class has been seen or could plausibly be pickled; any
# other "<module>.MLPClassifier" found in the file is mapped too (the name is never imported).
_MLP_MODULES = ("__main__", "units", "model", "models", "train", "prediction", "virnucpro")
_TORCH_MODULES: dict[str, type[_PickledModule]] = {
    "torch.nn.modules.linear.Linear": _PickledLinear,
    "torch.nn.modules.batchnorm.BatchNorm1d": _PickledBatchNorm1d,
    "torch.nn.modules.dropout.Dropout": _PickledDropout,
    "torch.nn.modules.activation.ReLU": _PickledReLU,
}
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# torch.serialization.safe_globals edits a process-wide set; serialise our own loads so one load's
# exit cannot drop names another is still using.
_LOAD_LOCK = threading.Lock()


def _safe_globals(extra_mlp_names: set[str]) -> list[tuple[type, str]]:
    names = {f"{m}.MLPClassifier" for m in _MLP_MODULES} | extra_mlp_names
    return [(_PickledMLP, n) for n in sorted(names)] + [(c, n) for n, c in _TORCH_MODULES.items()]


def _refuse_globals(name: str, offending: list[str]) -> ModelFileError:
    return ModelFileError(
        f"refusing to load {name}: it references {', '.join(sorted(offending))}, "
        "which is not part of a VirNucPro classifier"
    )


def _corrupt(path: Path, exc: Exception) -> ModelFileError:
    detail = str(exc).strip().split(". ")[0] or type(exc).__name__
    return ModelFileError(
        f"cannot read classifier {path}: corrupt, truncated or not a torch.save file ({detail})"
    )


def _unpickler_reason(exc: Exception) -> str:
    """The weights-only unpickler's own reason, without torch's advice to retry with weights_only=False."""
    text = str(exc)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text, re.S)
    return " ".join((m.group(1) if m else text).split())


def _unpickle(data: bytes, path: Path) -> Any:
    """torch.load with weights_only=True and only the classifier's classes mapped to stand-ins."""
    name = path.name
    with _LOAD_LOCK:
        try:
            # Static scan (nothing executed) to name every global the file wants, for a clear error
            # before unpickling; legacy non-zip files cannot be scanned, the unpickler still guards.
            found = set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
        except ValueError:
            found = set()
        except Exception as exc:
            raise _corrupt(path, exc) from exc
        extra = {g for g in found if g.endswith(".MLPClassifier") and _DOTTED_NAME.match(g)}
        allowed = _safe_globals(extra)
        offending = found - {n for _, n in allowed}
        if offending:
            raise _refuse_globals(name, sorted(offending))
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch strips "builtins." from names it reports; put it back so the message is unambiguous
            bad = [g if "." in g else f"builtins.{g}" for g in re.findall(r"GLOBAL (\S+)", str(exc))]
            if bad:
                raise _refuse_globals(name, bad) from exc
            raise ModelFileError(f"refusing to load {name}: {_unpickler_reason(exc)}") from exc
        except Exception as exc:
            raise _corrupt(path, exc) from exc


def _module_state(stub: Any, kind: type[_PickledModule], where: str, name: str) -> dict[str, Any]:
    if type(stub) is not kind:
        got = getattr(type(stub), "kind", type(stub).__name__)
        raise ModelFileError(
            f"{name} is not a VirNucPro classifier: {where} is a {got}, expected {kind.kind}"
        )
    return getattr(stub, "state", {})  # a stand-in the pickle never BUILDs has no state


def _tensors(state: dict[str, Any], attr: str, prefix: str, name: str) -> dict[str, Any]:
    group = state.get(attr, {})
    if not isinstance(group, Mapping):
        raise ModelFileError(f"{name} is not a VirNucPro classifier: {prefix}{attr} is not a mapping")
    return {f"{prefix}{k}": v for k, v in group.items() if v is not None}


def _state_dict_from_module(root: _PickledMLP, name: str) -> tuple[dict[str, Any], float]:
    """Flatten the stand-in tree into a state dict, checking each submodule's class."""
    state = _module_state(root, _PickledMLP, "the pickled object", name)
    children = state.get("_modules")
    if not isinstance(children, Mapping):
        raise ModelFileError(f"{name} is not a VirNucPro classifier: the module has no submodules")
    expected = {
        "hidden_layer": _PickledLinear,
        "bn1": _PickledBatchNorm1d,
        "dropout": _PickledDropout,
        "output_layer": _PickledLinear,
    }
    extra = {k for k, v in children.items() if k not in expected and type(v) is not _PickledReLU}
    if extra or set(expected) - set(children):
        raise ModelFileError(
            f"{name} is not a VirNucPro classifier: "
            f"submodules are {sorted(children)}, expected {sorted(expected)}"
        )
    flat: dict[str, Any] = _tensors(state, "_parameters", "", name) | _tensors(state, "_buffers", "", name)
    eps = 1e-5
    for child, kind in expected.items():
        sub = _module_state(children[child], kind, child, name)
        flat |= _tensors(sub, "_parameters", f"{child}.", name) | _tensors(sub, "_buffers", f"{child}.", name)
        if kind is _PickledBatchNorm1d:
            eps = sub.get("eps", eps)
            tracks = sub.get("track_running_stats", True)
            if not isinstance(eps, float) or not 0 < eps < 1 or tracks is not True:
                raise ModelFileError(f"{name} is not a VirNucPro classifier: unexpected BatchNorm settings")
    return flat, eps


def _checked_state_dict(sd: Mapping[str, Any], name: str,
                        input_dim: int | None = INPUT_DIM) -> tuple[dict[str, torch.Tensor], int, int]:
    """Exact keys and shapes of MLPClassifier(input_dim, H, 2); returns float32 tensors, H, input dim.

    ``input_dim=None`` accepts any width (the caller checks it against the encoders' output).
    """
    w = sd.get("hidden_layer.weight")
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise ModelFileError(f"{name} is not a VirNucPro classifier: no 2-D 'hidden_layer.weight' tensor")
    hidden, in_dim = w.shape
    if input_dim is not None and in_dim != input_dim:
        raise ModelFileError(
            f"{name} expects {in_dim} input features, but the encoders give {input_dim}"
            + (" (DNABERT-S 768 + ESM-2 3B 2560)" if input_dim == INPUT_DIM else "")
        )
    shapes = {
        "hidden_layer.weight": (hidden, in_dim),
        "hidden_layer.bias": (hidden,),
        "bn1.weight": (hidden,),
        "bn1.bias": (hidden,),
        "bn1.running_mean": (hidden,),
        "bn1.running_var": (hidden,),
        "bn1.num_batches_tracked": (),
        "output_layer.weight": (NUM_CLASSES, hidden),
        "output_layer.bias": (NUM_CLASSES,),
    }
    optional = {"bn1.num_batches_tracked"}  # absent from checkpoints of very old torch
    missing = set(shapes) - set(sd) - optional
    unexpected = set(sd) - set(shapes)
    if missing or unexpected:
        raise ModelFileError(
            f"{name} is not a VirNucPro classifier: "
            f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}"
        )
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[key]:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ModelFileError(f"{name}: '{key}' is {got}, expected shape {shapes[key]}")
        _check_layout(value, key, name)  # every tensor, before anything is built from any of them
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            out[key] = value.detach().to(torch.long)
        elif value.is_floating_point():
            out[key] = value.detach().to(torch.float32)
        else:
            raise ModelFileError(f"{name}: '{key}' has dtype {value.dtype}, expected floating point")
        if bad := int((~torch.isfinite(out[key])).sum()):  # NaN/Inf: every frame 'others', score nan
            raise ModelFileError(f"{name}: '{key}' holds {bad} NaN or infinite value(s); refusing a "
                                 "classifier that would call every frame 'others' with score nan")
    return out, hidden, in_dim


def _check_layout(value: torch.Tensor, key: str, name: str) -> None:
    """Refuse a tensor that is not a plain contiguous block inside its own storage.

    torch.save keeps views as (storage, offset, shape, strides): a few bytes with stride 0 can
    claim a huge shape (``torch.zeros(1).expand(40000, 3328)`` is 4 bytes on disk, 530 MB once
    copied into the model), so each tensor must be backed by as many stored bytes as it holds.
    """
    needed = (value.storage_offset() + value.numel()) * value.element_size()
    stored = value.untyped_storage().nbytes()
    if value.numel() and (not value.is_contiguous() or value.storage_offset() < 0 or stored < needed):
        raise ModelFileError(
            f"{name}: '{key}' is a view of shape {tuple(value.shape)} with strides {value.stride()} "
            f"over {stored} stored bytes (needs {needed} contiguous bytes); not a saved model weight"
        )


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu",
                    input_dim: int | None = INPUT_DIM) -> Classifier:
    """Load a VirNucPro classifier (whole pickled module, state dict, or {'state_dict': ...} checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"classifier file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"classifier path is not a file: {path}")
    data = path.read_bytes()  # one read: the bytes hashed are the bytes loaded
    obj = _unpickle(data, path)
    eps = 1e-5
    if isinstance(obj, _PickledModule):
        sd, eps = _state_dict_from_module(obj, path.name)
    elif isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model_state_dict") if k in obj), obj)
        if isinstance(inner, _PickledModule):
            sd, eps = _state_dict_from_module(inner, path.name)
        elif isinstance(inner, Mapping):
            sd = dict(inner)
        else:
            kind = type(inner).__name__
            raise ModelFileError(f"{path.name} is not a VirNucPro classifier: state dict is a {kind}")
    else:
        raise ModelFileError(f"{path.name} is not a VirNucPro classifier: it holds a {type(obj).__name__}")
    del obj  # never keep the unpickled objects around
    tensors, hidden, in_dim = _checked_state_dict(sd, path.name, input_dim)
    model = MLPClassifier(in_dim, hidden, NUM_CLASSES)
    model.bn1.eps = eps
    model.load_state_dict(tensors, strict=False)  # strictness checked above; num_batches_tracked optional
    return Classifier(model, path, hashlib.sha256(data).hexdigest(), torch.device(device))


def check_chunk_size(path: str | Path, chunk_size: int) -> str | None:
    """Warning text when the file name names a chunk size (300/500) other than the one in use.

    The original never checks this pairing; a 500_model run on 300-bp chunks silently misclassifies.
    """
    said = {int(m) for m in re.findall(r"(?<!\d)(300|500)(?!\d)", Path(path).name)}
    if not said or chunk_size in said:
        return None
    return (
        f"classifier {Path(path).name} looks trained for chunk size {'/'.join(map(str, sorted(said)))}, "
        f"but chunk size is {chunk_size}; predictions may be unreliable"
    )


def chunk_size_warnings(models: Mapping[str, Any], chunk_size: int) -> list[str]:
    """``check_chunk_size`` for the located models' classifier (none without one, or for the demo
    one): what ``predict`` and ``check-precision`` both warn about."""
    classifier = models.get("classifier")
    if classifier is None or classifier.spec == "demo":
        return []
    return [w for w in [check_chunk_size(classifier.path, chunk_size)] if w]
