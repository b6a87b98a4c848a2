"""The README's library example runs as written."""
import os
import re

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def test_readme_python_example_runs(capsys):
  with open(README) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), re.S)
  assert blocks, 'README has no python example'
  exec(compile(blocks[0], 'README.md', 'exec'), {})  # pylint: disable=exec-used
  out = capsys.readouterr().out
  bpd, err, shape = out.split(' ', 1)[0], out.split()[1], out.split(' ', 2)[2]
  assert float(bpd) > 0
  assert float(err) < 1e-4
  assert '(4, 16, 16, 1)' in shape
