"""The README's library example runs as written, and the Shuffle moves in it."""
import ast
import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_readme_python_example_runs(capsys):
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python example'
  exec(compile(blocks[0], 'README.md', 'exec'), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  found = re.fullmatch(r'bpd (\S+); channels of u_1 factored out: (\[.*?\]) -> (\[.*?\])\n', out)
  assert found, out
  assert 0 < float(found.group(1)) < 16
  before, after = ast.literal_eval(found.group(2)), ast.literal_eval(found.group(3))
  assert before == list(range(8, 16))  # u_1 has 16 channels; at init the last half goes
  assert len(after) == 8 and after != before
