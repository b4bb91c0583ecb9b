"""README.md and docs/ agree with the code and with the machine a reader has: one count of the
component families (the registry's), every family in docs/plugins.md's names table, and every
example command CPU-sized or marked GPU-sized."""
import re
from pathlib import Path

from nvllm.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text()
         for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def test_every_page_counts_the_families_the_registry_has():
    count = re.compile(r"\b(\w+) (?:pluggable )?component families|\b(?:nvllm's|[Tt]he|of) (\w+) families", re.M)
    claims = [(page, word.lower()) for page, text in PAGES.items() for m in count.finditer(text.replace("\n", " "))
              for word in m.groups() if word and word.lower() in NUMBERS]
    assert len(claims) >= 3, "found no count of the families to check"
    assert {word for _, word in claims} == {NUMBERS[len(FAMILIES)]}, claims


def test_the_plugin_guide_names_every_family_with_its_hook():
    section = PAGES["docs/plugins.md"].split("## Names and config groups", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| `(\w+)` \| `(\w+)` \|", section, re.M)
    assert {family: hook for family, hook, _ in rows} == {name: f.hook for name, f in FAMILIES.items()}
    assert all(family == group for family, _, group in rows)


def commands(text: str):
    """(command with its continuation lines, the comment line just above it) per shell line in the
    page's code blocks that runs nvllm (python -m nvllm.*, nvllm <cmd>, torchrun ... nvllm.run)."""
    for block in re.findall(r"^```(?:bash|sh|console)?\n(.*?)^```$", text, re.M | re.S):
        lines, above = block.splitlines(), ""
        i = 0
        while i < len(lines):
            command = lines[i]
            while command.split("#", 1)[0].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]
            if re.search(r"nvllm[. ](run|serve)\b", command):
                yield command, above
            above = lines[i] if lines[i].lstrip().startswith("#") else ""
            i += 1


def gpu_sized(command: str) -> str | None:
    """Why the command needs a GPU to run in reasonable time, or None. A simulated run computes no
    forward pass: any size runs on a CPU."""
    if "forward=simulated" in command:
        return None
    if re.search(r"workload=random(?=\s|$)", command) and "workload.num_seqs" not in command:
        return "workload=random is nano-vllm's benchmark: 256 requests of up to 1,024 + 1,024 tokens"
    size = re.search(r"model\.path=\S*?(\d+(?:\.\d+)?)B\b", command)
    if size and float(size.group(1)) >= 1:
        return f"a model of {size.group(1)}B parameters"
    return None


def test_every_example_is_cpu_sized_or_marked_gpu_sized():
    checked, unmarked = 0, []
    for page, text in PAGES.items():
        for command, above in commands(text):
            checked += 1
            why = gpu_sized(command)
            if why and "GPU" not in command.partition("#")[2] + above:
                unmarked.append(f"{page}: {command.strip()} ({why}; say 'GPU-sized' in its comment)")
    assert checked > 30, "found too few example commands: has the code-block format changed?"
    assert not unmarked, "\n".join(unmarked)


def test_the_size_check_catches_the_full_benchmark():
    assert gpu_sized("python -m nvllm.run workload=random workload.request_rate=2")
    assert gpu_sized("python -m nvllm.run model=qwen3 model.path=/models/Qwen3-8B")
    assert not gpu_sized("python -m nvllm.run workload=random_small workload.request_rate=2")
    assert not gpu_sized("python -m nvllm.run forward=simulated workload=random model.path=/models/Qwen3-8B")
