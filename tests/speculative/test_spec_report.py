"""nvllm.tools.spec_report on made-up runs (no model): speed-up against speculative=none on the same
workload, vLLM's acceptance figures, whether the tokens were identical, and its two plots."""
import json

import pytest

from nvllm.tools import spec_report


def run(tmp_path, n, workload, drafter, k, decode, digest, accepted_per_pos=None):
    spec = None
    if accepted_per_pos is not None:
        drafts = 10
        spec = {"num_spec_tokens": k, "num_drafts": drafts, "num_draft_tokens": drafts * k,
                "num_accepted_tokens": sum(accepted_per_pos), "num_accepted_tokens_per_pos": accepted_per_pos}
    m = {"status": "ok", "overrides": [f"workload={workload}", f"speculative.num_speculative_tokens={k}",
                                       f"speculative={drafter}"],
         "device": "cpu: test", "decode_throughput": decode, "output_throughput": decode / 2, "spec_decode": spec,
         "output_tokens_sha256": digest, "effective_config": {"speculative": {"name": drafter}}}
    (tmp_path / str(n)).mkdir()
    (tmp_path / str(n) / "metrics.json").write_text(json.dumps(m))


def test_table_and_plots(tmp_path, capsys):
    run(tmp_path, 0, "grounded", "none", 2, 10.0, "a")
    run(tmp_path, 1, "grounded", "ngram", 2, 25.0, "a", [8, 6])
    run(tmp_path, 2, "grounded", "none", 4, 12.0, "a")
    run(tmp_path, 3, "grounded", "ngram", 4, 30.0, "b", [8, 6, 4, 2])  # different tokens: flagged
    run(tmp_path, 4, "chat", "none", 2, 20.0, "c")
    run(tmp_path, 5, "chat", "ngram", 2, 19.0, "c", [1, 0])
    spec_report.main([str(tmp_path)])
    rows = {(r["workload"], r["drafter"], r["k"]): r for r in spec_report.summarise(spec_report.load_runs(tmp_path))}
    assert rows["grounded", "ngram", 2]["speedup"] == pytest.approx(25 / 10)  # none's cell at k=2
    assert rows["grounded", "ngram", 4]["speedup"] == pytest.approx(30 / 12)
    assert rows["grounded", "ngram", 4]["identical"] is False and rows["grounded", "ngram", 2]["identical"] is True
    assert rows["grounded", "ngram", 4]["acceptance"] == pytest.approx(20 / 40)
    assert rows["grounded", "ngram", 4]["mean_length"] == pytest.approx(1 + 20 / 10)
    assert rows["grounded", "ngram", 4]["per_pos"] == [0.8, 0.6, 0.4, 0.2]
    assert rows["chat", "ngram", 2]["speedup"] == pytest.approx(0.95)
    md = (tmp_path / "speculative.md").read_text()
    assert "| grounded | ngram | 4 | 1 | 30.0 | 2.50× |" in md and "| NO |" in md
    pytest.importorskip("matplotlib")
    for png in ("speedup_vs_k.png", "acceptance_per_position.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in md
