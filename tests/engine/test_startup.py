"""The start-up line of a simulated run names what it simulates (device, dtype, model shape, cost
model), not the CPU that runs the simulation. A real run's line is checked end to end in
tests/test_cli.py."""
import re

from nvllm import LLM
from nvllm.engine.startup import startup_line
from nvllm.plugins import load_plugins

load_plugins()


def test_a_simulated_run_names_the_simulated_hardware_dtype_and_shape():
    with LLM({"name": "llama", "shape": "tiny"}, forward={"name": "simulated", "hardware": "h200"},
             max_model_len=128) as llm:
        line = startup_line(llm.engine)
    assert line.startswith("nvllm: SIMULATED, UNCALIBRATED (roofline of h200): model=llama (shape tiny: "), line
    assert re.search(r"\d+ layers, hidden \d+, \d+ heads \(\d+ KV\), [\d.]+B parameters\) on h200, bfloat16, tp=1;",
                     line), line
    assert "on cpu" not in line and "float32" not in line and "attention=" not in line, line
    assert re.search(r"; KV cache \d+ blocks x \d+ tokens = [\d.]+ GiB; max_model_len=128; loaded in", line), line
