"""What a training run shows and writes: the progress bar, <workdir>/metrics.jsonl,
TensorBoard event files (<workdir>/tb), test bits/dim and sample grids
(<workdir>/samples/step_XXXXXXXX.png). Only process 0 writes.

A run that starts at step s (fresh: 0, resumed: the checkpoint's step) first drops
the metrics.jsonl records of steps after s, written by a run killed before its
next checkpoint, so the file reads like one uninterrupted run.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from eiw_jax import api, data, losses
from eiw_jax.train import files


_CHANGE_FLAGS = ('split_changed_', 'order_changed_')


class Monitor:

  def __init__(self, trainer, workdir: str, start: int, total: int,
               test_split: Optional[data.Split] = None):
    self.trainer, self.workdir = trainer, workdir
    self.config = trainer.config
    self.is_main = jax.process_index() == 0
    self.pbar = tqdm.tqdm(total=total, initial=start, unit='step', dynamic_ncols=True,
                          disable=not self.is_main, file=sys.stderr, smoothing=0.1)
    self._last_time, self._last_step = time.perf_counter(), start
    self._writer = None
    if self.is_main:
      _truncate_metrics(os.path.join(workdir, 'metrics.jsonl'), start)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, 'tb'))
    model = trainer.model
    self._log_prob = trainer.jit(lambda v, x, k: api.log_prob(model, v, x, k))
    n, temp = self.config.train.num_samples, self.config.train.sample_temperature
    self._sample = trainer.jit(lambda v, k: api.sample(model, v, k, n, temp))
    self._test = test_split
    self._input_s = 0.0
    self._changes = None  # per transition: steps whose update changed the factored-out set

  def tick(self, input_s: float = 0.0, metrics=None) -> None:
    """One step done; `input_s` is the time the host waited for its batch.

    The Shuffle's per-step `split_changed_k` and `order_changed_k` flags are
    summed on the device (no host sync) and logged as `split_changes_k` and
    `order_changes_k`: the number of steps since the previous log whose update
    changed transition k's factored-out channel set, or kept the set but
    reordered the channels within a half.
    """
    self._input_s += input_s
    flags = {k: v for k, v in (metrics or {}).items() if k.startswith(_CHANGE_FLAGS)}
    if flags:
      self._changes = flags if self._changes is None else jax.tree.map(
          jnp.add, self._changes, flags)
    self.pbar.update(1)

  def log(self, step: int, metrics, extra=None) -> dict:
    """Fetches the step's metrics (one host sync per logged step) and writes them."""
    record = {k: float(v) for k, v in jax.device_get(metrics).items()
              if not k.startswith(_CHANGE_FLAGS)}
    if self._changes is not None:
      record.update({k.replace('changed', 'changes'): int(v)
                     for k, v in jax.device_get(self._changes).items()})
      self._changes = None
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    elapsed = max(now - self._last_time, 1e-9)
    record['images_per_s'] = steps * self.config.data.batch_size / elapsed
    # Host time spent waiting for input batches, as a fraction of the interval: the
    # step is dispatched asynchronously, so this is time the device may have idled.
    record['input_wait_fraction'] = min(self._input_s / elapsed, 1.0)
    self._last_time, self._last_step, self._input_s = now, step, 0.0
    record.update(extra or {})
    record = {'step': step, **record}
    nfe = {'nfe': f'{record["nfe"]:.0f}'} if 'nfe' in record else {}  # FFJORD backbone
    self.pbar.set_postfix(bpd=f'{record["bpd"]:.3f}', img_s=f'{record["images_per_s"]:.1f}',
                          **nfe, refresh=False)
    self._write(record)
    return record

  def evaluate(self, step: int, state) -> dict:
    """Test bits/dim on config.train.eval_examples images, and a sample grid PNG."""
    jax.block_until_ready(state)  # finish the queued training steps before timing the eval
    t0 = time.perf_counter()
    variables = state.variables()
    if self._test is None:
      self._test = data.load_split(self.config.data, 'test')
    b = self.config.data.batch_size
    num_batches = max(1, min(self.config.train.eval_examples, len(self._test.images)) // b)
    it = data.batches(self._test, b, seed=0, shuffle=False, repeat=True,
                      process_index=jax.process_index(), process_count=jax.process_count())
    key = jax.random.key((self.config.train.seed + 1) % 2**63)  # seeds are int64
    total = 0.0
    for i in range(num_batches):
      lp = self._log_prob(variables, self.trainer.global_batch(next(it)), jax.random.fold_in(key, i))
      total += float(jnp.mean(lp))
    num_dims = self.trainer.model.num_dims
    result = {'test_bpd': float(losses.bits_per_dim(total / num_batches, num_dims))}
    samples = self._sample(variables, jax.random.fold_in(key, step))
    if self.is_main:
      from eiw_jax.evaluation.images import save_grid  # pylint: disable=g-import-not-at-top
      path = os.path.join(self.workdir, 'samples', f'step_{step:08d}.png')
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with files.replacing(path) as tmp:  # whole or not at all (train/files.py)
        save_grid(np.asarray(jax.device_get(samples)), tmp, self.config.data.num_bits)
      result['sample_grid'] = path
    if self.is_main:
      self.pbar.write(f'step {step}: test bpd {result["test_bpd"]:.4f} '
                      f'({time.perf_counter() - t0:.1f}s)', file=sys.stderr)
    # The eval time must not count against the training images/s.
    self._last_time += time.perf_counter() - t0
    return result

  def _write(self, record: dict) -> None:
    if not self.is_main:
      return
    files.append_line(os.path.join(self.workdir, 'metrics.jsonl'), json.dumps(record))
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._writer.add_scalar(k, v, record['step'])

  def close(self) -> None:
    self.pbar.close()
    if self._writer is not None:
      self._writer.close()


def _truncate_metrics(path: str, start: int) -> None:
  """Keeps the records of steps <= start.

  A damaged file (a torn line, two records run together, a cut last record) is
  read record by record: every whole record is kept, the rest is reported in one
  warning, and the file as it was is kept beside it (metrics.jsonl.damaged-N), so
  nothing is lost for good.
  """
  if not os.path.exists(path):
    return
  with open(path, 'rb') as f:
    text = f.read().decode('utf-8', errors='replace')
  records, bad = _records(text)
  keep = [json.dumps(r) + '\n' for r in records if r['step'] <= start]
  if bad:
    n = 1
    while os.path.exists(f'{path}.damaged-{n}'):
      n += 1
    os.replace(path, f'{path}.damaged-{n}')
    print(f'WARNING: {path} was damaged ({bad} unreadable fragment(s)); kept the '
          f'{len(records)} whole records (those after step {start} are dropped as '
          f'usual) and the file as it was in {path}.damaged-{n}', file=sys.stderr, flush=True)
  files.write_text(path, ''.join(keep))


def _records(text: str):
  """(records with an int 'step', number of unreadable fragments) of JSON-lines text."""
  decoder = json.JSONDecoder()
  records, bad, i, n = [], 0, 0, len(text)
  while i < n:
    while i < n and text[i].isspace():
      i += 1
    if i >= n:
      break
    try:
      record, end = decoder.raw_decode(text, i)
    except ValueError:
      record, end = None, None
    if isinstance(record, dict) and isinstance(record.get('step'), int):
      records.append(record)
      i = end
      continue
    bad += 1  # skip to the next record's start: a new line or a '{"step"'
    nxt = [j for j in (text.find('\n', i + 1), text.find('{"step"', i + 1)) if j != -1]
    i = min(nxt) if nxt else n
  return records, bad
