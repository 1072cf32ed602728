"""One encoder contract: the package's factories, padded and packed encoders alike, no import circles."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import virnuc_hpc
from virnuc_hpc.encoders import Encoder, load_dnabert, load_esm2
from virnuc_hpc.encoders import factory
from virnuc_hpc.encoders.dnabert import DNABERTEncoder, load_dnabert_parts
from virnuc_hpc.encoders.dnabert_packed import PackedDNABERTEncoder
from virnuc_hpc.encoders.esm2 import ESM2Encoder, load_esm2_model
from virnuc_hpc.encoders.esm2_packed import PackedESM2Encoder

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

PROTEINS = ["MKVLAAGIVGLLLAQ", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MA", "MKVLAAGIVGLLLAQ"]
NUCLEOTIDES = ["ACGTACGTTGCAACGTAGCTAGCTAGGCTA", "TTTTGGGGCCCCAAAA", "ACGT" * 30, "GATTACA"]


@pytest.fixture(scope="module")
def demo(demo_cache: Path):
    from virnuc_hpc.models.demo import ensure_demo_models
    return ensure_demo_models()


def test_package_factories_equal_submodule_factories(demo) -> None:
    cases = ((load_esm2, factory.load_esm2, demo.esm2, PROTEINS),
             (load_dnabert, factory.load_dnabert, demo.dnabert, NUCLEOTIDES))
    for load, load_sub, spec, seqs in cases:
        enc = load(str(spec), device="cpu", precision="auto")
        assert isinstance(enc, Encoder)
        got = enc.embed(seqs)
        assert got.dtype == np.float32 and got.shape == (len(seqs), enc.dim)
        np.testing.assert_array_equal(got, load_sub(str(spec), device="cpu", precision="auto").embed(seqs))
    assert load_esm2 is factory.load_esm2 and load_dnabert is factory.load_dnabert


def test_padded_encoders_keep_the_contract(demo) -> None:
    esm = load_esm2(str(demo.esm2), device="cpu", precision="fp32")
    dna = load_dnabert(str(demo.dnabert), device="cpu", precision="fp32")
    assert type(esm) is ESM2Encoder and type(dna) is DNABERTEncoder  # CPU: the padded paths
    for enc, seqs in ((esm, PROTEINS), (dna, NUCLEOTIDES)):
        assert enc.device == torch.device("cpu") and enc.precision == "fp32"
        stats = dict(enc.stats)
        enc.warm_up()  # nothing to compile: no work counted
        assert enc.stats == stats
        prepared = enc.prepare(seqs)
        assert prepared == list(seqs)
        np.testing.assert_array_equal(enc.embed(prepared), enc.embed(seqs))
    direct_esm = ESM2Encoder(load_esm2_model(demo.esm2), name="demo", device=torch.device("cpu"),
                             precision="fp32", path=demo.esm2)
    np.testing.assert_array_equal(esm.embed(PROTEINS), direct_esm.embed(PROTEINS))
    direct_dna = DNABERTEncoder(*load_dnabert_parts(str(demo.dnabert))[:2], name="demo", device="cpu",
                                precision="fp32")
    np.testing.assert_array_equal(dna.embed(NUCLEOTIDES), direct_dna.embed(NUCLEOTIDES))


def test_packed_encoders_keep_the_contract(demo) -> None:
    model = load_esm2_model(demo.esm2)
    esm = PackedESM2Encoder(model, name="demo", device=torch.device("cpu"), precision="fp32", max_tokens=512)
    dna_model, tokenizer, weights = load_dnabert_parts(str(demo.dnabert))
    dna = PackedDNABERTEncoder(dna_model, tokenizer, name="demo", weights=weights, device="cpu",
                               precision="fp32")
    refs = (load_esm2(str(demo.esm2), device="cpu", precision="fp32").embed(PROTEINS),
            load_dnabert(str(demo.dnabert), device="cpu", precision="fp32").embed(NUCLEOTIDES))
    for enc, seqs, ref in ((esm, PROTEINS, refs[0]), (dna, NUCLEOTIDES, refs[1])):
        assert isinstance(enc, Encoder)
        got = enc.embed(enc.prepare(seqs))
        assert got.dtype == np.float32 and got.shape == (len(seqs), enc.dim)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_engines_wrap_every_encoder_through_the_one_hook(demo) -> None:
    """``with_engine(name, wrap)``: wrap gets the module owning the weights and the encoder's own
    runner; every later device batch goes through what it returns, and the rows do not change."""
    dna_model, tokenizer, weights = load_dnabert_parts(str(demo.dnabert))
    encoders = [
        (load_esm2(str(demo.esm2), device="cpu", precision="fp32"), PROTEINS),
        (PackedESM2Encoder(load_esm2_model(demo.esm2), name="demo", device=torch.device("cpu"),
                           precision="fp32", max_tokens=512), PROTEINS),
        (load_dnabert(str(demo.dnabert), device="cpu", precision="fp32"), NUCLEOTIDES),
        (PackedDNABERTEncoder(dna_model, tokenizer, name="demo", weights=weights, device="cpu",
                              precision="fp32"), NUCLEOTIDES),
    ]
    for enc, seqs in encoders:
        assert enc.engine == "native"
        want = enc.embed(seqs)
        calls, owners = [], []

        def wrap(module, run):
            owners.append(module)
            return lambda *batch: calls.append(1) or run(*batch)

        enc.with_engine("counting", wrap)
        assert enc.engine == "counting" and owners == [enc.model]
        np.testing.assert_array_equal(enc.embed(seqs), want)
        assert calls and len(calls) == enc.stats["batches"] // 2, type(enc).__name__


def _import_graph() -> dict[str, set[str]]:
    root = Path(virnuc_hpc.__file__).parent
    mods = {}
    for p in root.rglob("*.py"):
        parts = ("virnuc_hpc", *p.relative_to(root).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):  # module-level, lazy and TYPE_CHECKING alike
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def test_no_import_circle_through_encoders() -> None:
    graph = _import_graph()
    mine = {"virnuc_hpc.models.demo", "virnuc_hpc.models.resolve", "virnuc_hpc.models.random_weights"} | {
        m for m in graph if m.startswith(("virnuc_hpc.encoders", "virnuc_hpc.models.random_weights."))}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    circles = sorted(m for m in mine if m in reaches(m))
    assert not circles, f"import circles through {circles}"
    for m in graph:
        if m.startswith("virnuc_hpc.encoders"):
            assert not {"virnuc_hpc.models.resolve", "virnuc_hpc.models.demo"} & graph[m], m
