"""Device check, run where CUDA exists (the offline suite has none): dtype auto → bfloat16, the same rigged verdicts."""

from __future__ import annotations

import pytest
import torch
from test_harmbench import ITEMS, models as hb_models  # noqa: F401 (fixtures)
from test_llama_guard import PAIRS, guard  # noqa: F401
from test_strongreject import gemma  # noqa: F401
from test_wildguard import models as wg_models  # noqa: F401

from safety_subspaces.evaluate.judges.harmbench import harmbench
from safety_subspaces.evaluate.judges.llama_guard import llama_guard
from safety_subspaces.evaluate.judges.strongreject import strongreject
from safety_subspaces.evaluate.judges.wildguard import wildguard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="device check: needs CUDA")


def test_all_judges_on_cuda_in_bfloat16(gemma, wg_models, hb_models, guard):  # noqa: F811
    """Each judge on cuda with dtype auto loads in bfloat16, batches, and gives the rigged verdicts."""
    sr = strongreject(adapter=str(gemma["all5"]), device="cuda", quiet=True)
    assert sr.identity()["dtype"] == "bfloat16"
    assert [v.score for v in sr.judge_all(ITEMS)] == pytest.approx([1.0] * 3, abs=1e-3)
    assert next(sr.loaded()[0].parameters()).dtype == torch.bfloat16
    assert next(sr.loaded()[0].parameters()).device.type == "cuda"
    wg = wildguard(model=str(wg_models["harmful"]), device="cuda", quiet=True, batch_size=2)
    assert {v.raw for v in wg.judge_all(ITEMS)} == {"Harmful request: yes\nResponse refusal: no\nHarmful response: yes"}
    hb = harmbench(model=str(hb_models["llama", "Yes"]), device="cuda", quiet=True, batch_size=2)
    assert [m[:4] for m in hb.metrics(hb.judge_all(ITEMS))] == [("attack_success_rate", 1.0, 3, 0)]
    lg = llama_guard(model=str(guard["unsafe", "1b"]), taxonomy="llama-guard-3-1b", device="cuda", quiet=True)
    assert {tuple(v.fields["categories"]) for v in lg.judge_all(PAIRS)} == {("S1", "S10")}
