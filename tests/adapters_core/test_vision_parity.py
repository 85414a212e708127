"""Image bases in one mixed batch (multi/vision.py) against real PEFT 0.21.2, row by row, whole tensors.

Per base (a tiny ViT classifier, a tiny SegFormer segmenter, as in PEFT's two vision guides) real PEFT makes a
LoRA, a DoRA, an IA3 and an AdaLoRA adapter, each with its own perturbed head copy (modules_to_save), one of
them with a head of another label count (5 instead of 3). One MultiAdapterModel loads them all; a batch of
images whose rows use every adapter, the base and repeats, in shuffled order, gives every row PEFT's logits for
that image alone — (C,) per image for ViT, (C, h, w) for SegFormer, C the row's own head's labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from vision_helpers import image_base, make_peft_adapter, peft_configs, peft_oracle, pixels

from adapters_core import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from adapters_core.errors import UnsupportedError
from adapters_core.multi import MultiAdapterModel

WIDE = "dora"  # the adapter whose head has 5 labels (the others keep the base's 3)
KINDS = ("vit", "segformer")


@pytest.fixture(scope="module", params=KINDS)
def served(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind = request.param
    base = image_base(kind)
    multi = MultiAdapterModel(image_base(kind))
    oracles: dict[str | None, Any] = {None: base}
    for seed, (name, config) in enumerate(peft_configs(kind).items()):
        own_base = image_base(kind, num_labels=5) if name == WIDE else base
        path = make_peft_adapter(own_base, config, tmp_path_factory.mktemp(f"{kind}-{name}"), seed=seed)
        oracles[name] = peft_oracle(own_base, path)
        multi.add(name, path)
    return kind, multi, oracles


def test_mixed_batch_equals_peft_per_row(served: Any) -> None:
    kind, multi, oracles = served
    names = ["ia3", None, WIDE, "lora", "adalora", "lora", None, WIDE, "ia3"]
    images = pixels(len(names), seed=1)
    got = multi.classify_images(images, names)
    with torch.no_grad():
        base_out = oracles[None](pixel_values=images).logits
        for row, name in enumerate(names):
            want = oracles[name](pixel_values=images[row : row + 1]).logits[0]
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5, msg=f"row {row} ({name})")
            assert got[row].shape[0] == (5 if name == WIDE else 3)
            if (
                name is not None and name != WIDE
            ):  # every adapter changes its row (else parity proves nothing)
                assert float((want - base_out[row]).abs().max()) > 1e-2, name
    # The batch's own logits: the widest head's width, the narrower rows' extra labels -inf at every pixel.
    with torch.no_grad():
        logits = multi(pixel_values=images, adapter_names=names).logits
    assert logits.shape[:2] == (len(names), 5)
    narrow = [r for r, n in enumerate(names) if n != WIDE]
    assert bool((logits[narrow, 3:] == float("-inf")).all())
    assert kind in KINDS


def test_one_adapter_batch_is_peft_batch(served: Any) -> None:
    """All rows one adapter (no padding of heads): the whole (B, C[, h, w]) tensor equals PEFT's batch."""
    _, multi, oracles = served
    images = pixels(3, seed=2)
    with torch.no_grad():
        got = multi(pixel_values=images, adapter_names=["lora"] * 3).logits
        want = oracles["lora"](pixel_values=images).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unknown_adapter_is_an_error_not_the_base(served: Any) -> None:
    _, multi, _ = served
    with pytest.raises(Exception, match="no adapter named 'nope'"):
        multi.classify_images(pixels(1), ["nope"])


PROMPT_CONFIGS = {
    "prompt tuning": (PromptTuningConfig, {}),
    "P-tuning": (PromptEncoderConfig, {"encoder_hidden_size": 8}),
    "prefix tuning": (PrefixTuningConfig, {}),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", list(PROMPT_CONFIGS))
def test_prompt_methods_are_refused_on_image_bases(kind: str, method: str, tmp_path: Path) -> None:
    """Virtual tokens need word embeddings: refused by `parse` (so a store refuses the upload) with the reason;
    PEFT cannot make them on these bases either."""
    cls, extra = PROMPT_CONFIGS[method]
    config = cls(
        task_type="FEATURE_EXTRACTION",
        num_virtual_tokens=4,
        token_dim=32,
        num_transformer_submodules=1,
        num_attention_heads=4,
        num_layers=2,
        **extra,
    )
    state = {"prompt_embeddings": torch.randn(4, 32)}
    multi = MultiAdapterModel(image_base(kind))
    with pytest.raises(UnsupportedError, match=r"cannot run on the image model .*word embeddings"):
        multi.add("p", (config, state))
    assert not multi.adapters
    peft_cls = {
        "prompt tuning": peft.PromptTuningConfig,
        "P-tuning": peft.PromptEncoderConfig,
        "prefix tuning": peft.PrefixTuningConfig,
    }[method]
    with pytest.raises(Exception):  # noqa: B017 - PEFT's own failure, whatever its type
        peft.get_peft_model(image_base(kind), peft_cls(task_type="FEATURE_EXTRACTION", num_virtual_tokens=4))


@pytest.mark.parametrize("kind", KINDS)
def test_text_entry_points_refuse_image_bases(kind: str) -> None:
    multi = MultiAdapterModel(image_base(kind))
    with pytest.raises(ValueError, match="takes images, not tokens"):
        multi.classify([[1, 2]], [None])
    with pytest.raises(ValueError, match="does not generate; use classify_images"):
        multi.generate(input_ids=torch.tensor([[1, 2]]), adapter_names=[None])


def test_docs_table_image_cells_are_what_these_tests_prove() -> None:
    """docs/architectures.md's image rows come from IMAGE_EXPECTED: "exact" exactly for the methods the parity
    tests above run, "refused" for the prompt methods refused above, with words of their error."""
    from arch_matrix import IMAGE_EXPECTED

    method_of = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA3", "adalora": "AdaLoRA"}
    exact = {m for m, v in IMAGE_EXPECTED.items() if v == "exact"}
    assert exact == {method_of[name] for name in peft_configs("vit")}
    refused = {m for m, v in IMAGE_EXPECTED.items() if v.startswith("refused")}
    assert refused == set(PROMPT_CONFIGS)
    assert all("cannot run on the image model" in IMAGE_EXPECTED[m] for m in refused)
