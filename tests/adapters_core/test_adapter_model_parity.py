"""Two-way PEFT parity of LoRA, DoRA, AdaLoRA and IA3 on the tiny Llama (GQA), GPT-2, BERT and T5.

Per case (see parity_table.py): PEFT's file loaded by Swapyard gives PEFT's logits; Swapyard's file loaded by
PEFT gives Swapyard's logits; both files hold the same keys and shapes and equal configs; parameter counts
equal PEFT's; merged equals unmerged; disabled equals the base model (PEFT's persisted biases aside).
"""

from __future__ import annotations

import peft
import pytest
import torch
from parity_table import CASES, TOL, CaseRun, case_id, forward, reverse_diff, run_case
from tiny_models import BUILDERS, max_abs_diff

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CaseRun:
    return run_case(request.param, str(tmp_path_factory.mktemp(case_id(request.param))))


def test_peft_file_gives_peft_logits(run: CaseRun) -> None:
    assert max_abs_diff(run.peft_logits, run.base_logits) > 0.05, "the adapter must change the outputs"
    assert max_abs_diff(run.ours_logits, run.peft_logits) <= TOL


def test_our_file_gives_our_logits_in_peft(run: CaseRun) -> None:
    assert max_abs_diff(run.ours_created_logits, run.base_logits) > 0.05
    assert reverse_diff(run) <= TOL


def test_save_load_round_trips(run: CaseRun) -> None:
    if run.case.roundtrip_changes_outputs:
        # PEFT's quirk (reference §7.2): with lora_alpha=0 the loaded scale is r_k, the live one init_r
        assert max_abs_diff(run.ours_reloaded_logits, run.ours_created_logits) > 1e-2
    else:
        assert max_abs_diff(run.ours_reloaded_logits, run.ours_created_logits) <= TOL


def test_saved_keys_and_shapes_equal_peft(run: CaseRun) -> None:
    assert run.ours_keys == run.peft_keys


def test_saved_config_equals_peft(run: CaseRun) -> None:
    ours, theirs = dict(run.ours_json), dict(run.peft_json)
    for key in ("target_modules", "exclude_modules", "feedforward_modules"):  # PEFT writes sets unordered
        for cfg in (ours, theirs):
            if isinstance(cfg.get(key), list):
                cfg[key] = sorted(cfg[key])
    assert ours == theirs


def test_parameter_counts_equal_peft(run: CaseRun) -> None:
    assert run.counts["ours_created"] == run.counts["peft_created"]
    assert run.counts["ours_loaded"] == run.counts["peft_loaded"]


def test_merged_equals_unmerged_and_peft_merged(run: CaseRun) -> None:
    model = run.ours_loaded
    peft_model = peft.PeftModel.from_pretrained(BUILDERS[run.case.base](), run.peft_dir).eval()
    peft_model.merge_adapter()
    model.merge_adapter()
    try:
        merged = forward(model, run.inputs)
        assert max_abs_diff(merged, forward(peft_model, run.inputs)) <= TOL
        if not run.case.merge_is_lossy:
            assert max_abs_diff(merged, run.ours_logits) <= TOL
    finally:
        model.unmerge_adapter()
    assert max_abs_diff(forward(model, run.inputs), run.ours_logits) <= TOL


def test_disabled_equals_base(run: CaseRun) -> None:
    with run.ours_loaded.disable_adapter():
        disabled = forward(run.ours_loaded, run.inputs)
    assert max_abs_diff(disabled, run.peft_disabled) <= TOL
    if run.case.kwargs.get("bias", "none") == "none":
        assert max_abs_diff(disabled, run.base_logits) <= TOL
    else:  # trained biases overwrite the base's and stay when disabled, as in PEFT (reference §5.4)
        assert max_abs_diff(disabled, run.base_logits) > 1e-3
    assert max_abs_diff(forward(run.ours_loaded, run.inputs), run.ours_logits) <= TOL


@torch.no_grad()
def test_merge_and_unload_gives_plain_model_with_adapter_outputs(run: CaseRun) -> None:
    from adapters_core import AdapterModel

    model = AdapterModel.from_pretrained(BUILDERS[run.case.base](), run.peft_dir)
    plain = model.merge_and_unload()
    assert type(plain) is type(BUILDERS[run.case.base]())
    names = [n for n, _ in plain.named_modules()]
    assert not any(("lora_" in n or "ia3_l" in n or "modules_to_save" in n) for n in names)
    if not run.case.merge_is_lossy:
        assert max_abs_diff(plain(**run.inputs).logits, run.ours_logits) <= TOL
