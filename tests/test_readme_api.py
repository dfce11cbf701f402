"""The README's Python API example runs as written (against a random engine exported to a temporary directory)."""
import re
from pathlib import Path


from sidgr.arch import ModelArch
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.weights import save_engine

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_block() -> str:
    section = README.read_text().split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, capsys):
    sizes = [8, 8, 8]
    arch = ModelArch(codebook_sizes=tuple(sizes), hidden_size=32, num_layers=1, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=6)
    engine_dir = tmp_path / "engine"
    save_engine(engine_dir, arch, random_state_dict(arch, 0), random_mapping(120, sizes, seed=1), source="test")
    code = readme_api_block()
    assert '"runs/ml100k/engine' in code
    exec(compile(code.replace("runs/ml100k/engine", str(engine_dir)), "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("120 [8, 8, 8]")  # the mapping line: num_items, codebook sizes, item 42's codes
    top10 = [int(v) for v in re.findall(r"\d+", out[0].split("]")[0])]
    assert len(set(top10)) == 10 and not {3, 17, 42} & set(top10)  # history excluded
