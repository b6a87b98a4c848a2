"""Several processes training one model: start-up, stopping together, a dead peer.

Every process runs the same command. `initialize(config.train)` joins them with
`jax.distributed.initialize` (before anything touches a device): with
`train.coordinator_address`, `train.num_processes` and `train.process_id` given
(localhost runs, a GPU cluster without a scheduler JAX knows), else JAX's own
detection (Cloud TPU, SLURM, Open MPI). On CPU, cross-process collectives use
gloo (JAX's default).

Stopping together. A SIGTERM reaches one process or all of them; every process
has to save the same step, because a checkpoint is written collectively. With
one process, the SIGTERM handler sets a flag checked between steps, and so does
Ctrl-C (SIGINT): the run saves its current step and then raises `Interrupted`;
a second Ctrl-C ends the process at once, without saving. With
several, JAX's preemption service (started by `jax.distributed.initialize`)
catches SIGTERM on any process, and `Preemption.requested(step)` is True on
every process at the same, agreed step (a few steps after the signal).

A dead peer. A process that dies mid-run leaves the others waiting in a
collective, or failing in one. Either way each survivor stops with one line on
stderr and exit code 1, without waiting on the dead process:
  * `exit_on_peer_failure`: a collective failed (gloo on CPU: "connection closed
    by peer") -> at once;
  * `Watchdog`: every process bumps a counter in JAX's key-value store every
    second or two and watches the others'; a counter unchanged for
    `train.heartbeat_timeout_s / 2` seconds (50 s by default), or a lost
    coordinator, ends the process. That is before JAX's own heartbeat check
    (`train.heartbeat_timeout_s`), which would abort with a native stack trace.
    A process counts once it has started counting: one still compiling its step
    (a busy host, or a compilation cache it missed) is not yet in the loop, and
    JAX's own check covers it until then.
A process that has left the training loop (done, or stopped by SIGTERM) says so,
and is no longer watched.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from eiw_jax.errors import UserError


def initialize(train) -> None:
  """`jax.distributed.initialize` from the train.* keys (UserError on bad values)."""
  address = train.coordinator_address
  num, pid = train.num_processes, train.process_id
  timeout = train.heartbeat_timeout_s
  if not isinstance(timeout, int) or timeout < 1:
    raise UserError(f'train.heartbeat_timeout_s must be an integer >= 1, got {timeout!r}; '
                    'set --config.train.heartbeat_timeout_s=100')
  given = [bool(address), num > 0, pid >= 0]
  if any(given) and not all(given):
    raise UserError(
        'train.coordinator_address, train.num_processes and train.process_id go together '
        f'(got {address!r}, {num}, {pid}); set all three (e.g. --config.train.coordinator_'
        'address=localhost:1234 --config.train.num_processes=2 --config.train.process_id=0) '
        "or none, for JAX's own detection")
  if all(given) and not pid < num:
    raise UserError(f'train.process_id={pid} must be below train.num_processes={num}; '
                    'number the processes 0 .. num_processes - 1')
  kwargs = dict(coordinator_address=address, num_processes=num, process_id=pid) if all(
      given) else {}
  jax.distributed.initialize(heartbeat_timeout_seconds=timeout, **kwargs)


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, raised once the checkpoint of the current step is saved (the message
  says which); the scripts print it and end as interrupted (eiw_jax/cli.py)."""


class Preemption:
  """SIGTERM (with one process also Ctrl-C) -> `requested(step)` True between steps,
  on every process at once; `signal` names the first signal ('SIGTERM', 'SIGINT')."""

  def __init__(self):
    self._flag = False
    self._old = {}
    self._multi = jax.process_count() > 1
    self.signal = 'SIGTERM'

  def __enter__(self):
    if self._multi:  # JAX's preemption service owns SIGTERM
      return self
    for number, handler in ((signal.SIGTERM, self._handle), (signal.SIGINT, self._interrupt)):
      if signal.getsignal(number) is signal.SIG_IGN:  # nohup, a background job: as asked
        continue
      try:
        self._old[number] = signal.signal(number, handler)
      except ValueError:  # not the main thread
        pass
    return self

  def _handle(self, *unused):
    self._flag = True

  def _interrupt(self, *unused):
    if self._flag:  # the second signal: stop now
      print('\nerror: Ctrl-C again: stopped at once, without saving; the newest complete '
            'checkpoint is kept: rerun the same command to resume from it', file=sys.stderr,
            flush=True)
      die_by_sigint()
    self._flag, self.signal = True, 'SIGINT'
    print('\nCtrl-C: saving a checkpoint of the current step (Ctrl-C again stops at once, '
          'without saving)', file=sys.stderr, flush=True)

  def requested(self, step: int) -> bool:
    """Call once per step, with the same steps on every process."""
    if self._multi and not self._flag:
      self._flag = multihost_utils.reached_preemption_sync_point(step)
    return self._flag

  def __exit__(self, *unused):
    for number, old in self._old.items():
      signal.signal(number, old)


def die_by_sigint() -> None:
  """Ends the process as Ctrl-C's default action does (a shell sees status 130 and
  stops a script), skipping the clean-up a second Ctrl-C asked to skip."""
  sys.stdout.flush()
  sys.stderr.flush()
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  os.kill(os.getpid(), signal.SIGINT)
  os._exit(130)  # pylint: disable=protected-access


class TimeBudget:
  """`spent()`: True once `seconds` have passed since it was made (never when
  `seconds` <= 0). With several processes process 0's clock decides, so that
  every process stops at the same step; call it at the same steps everywhere."""

  def __init__(self, seconds: float):
    self._deadline = time.monotonic() + seconds if seconds > 0 else None

  def spent(self) -> bool:
    if self._deadline is None:
      return False
    spent = time.monotonic() >= self._deadline
    if jax.process_count() > 1:
      spent = bool(multihost_utils.broadcast_one_to_all(np.bool_(spent)))
    return spent


def exit_on_peer_failure(error: Exception) -> None:
  """With several processes, a failed computation means (almost always) a dead peer:
  one line on stderr and exit 1 now, skipping the clean-up that would wait on it."""
  if jax.process_count() <= 1:
    return
  _stop_now(f'a computation across processes failed ({" ".join(str(error).split())[:300]}); '
            'another process has probably died')


class Watchdog:
  """Ends this process (one line, exit 1) when another stops showing signs of life.

  Only with several processes; `timeout` seconds without a sign of a process that
  has shown one. A process not yet heard from is still starting (its step can take
  minutes longer to compile than another host's, say with a colder cache), so it is
  not judged: one that dies before then is JAX's coordination service's to report.
  """
  _KEY = 'eiw_jax/alive/'

  def __init__(self, timeout: float):
    self._timeout = float(timeout)
    self._stop = threading.Event()
    self._thread = None

  def __enter__(self):
    if jax.process_count() > 1:
      from jax._src import distributed  # pylint: disable=g-import-not-at-top
      self._client = distributed.global_state.client
      self._thread = threading.Thread(target=self._watch, daemon=True, name='eiw_watchdog')
      self._thread.start()
    return self

  def _watch(self):
    me, n = jax.process_index(), jax.process_count()
    period = max(0.1, min(2.0, self._timeout / 10))
    seen = {p: (None, time.monotonic()) for p in range(n) if p != me}
    count = 0
    while not self._stop.wait(period):
      count += 1
      try:
        self._client.key_value_set(f'{self._KEY}{me}', str(count), allow_overwrite=True)
      except Exception as e:  # pylint: disable=broad-except
        _stop_now(f'lost the coordinator, process 0 ({" ".join(str(e).split())[:200]}); it has '
                  'probably died')
      now = time.monotonic()
      for p, (value, since) in list(seen.items()):
        try:
          new = self._client.key_value_try_get(f'{self._KEY}{p}')
        except Exception:  # pylint: disable=broad-except
          new = value  # not written yet
        if new == 'done':
          del seen[p]
        elif new != value:
          seen[p] = (new, now)
        elif value is not None and now - since > self._timeout and not self._stop.is_set():
          _stop_now(f'process {p} has shown no sign of life for {self._timeout:.0f}s '
                    '(train.heartbeat_timeout_s / 2); it has probably died')

  def __exit__(self, *unused):
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    try:
      self._client.key_value_set(f'{self._KEY}{jax.process_index()}', 'done',
                                 allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except
      pass


def _stop_now(reason: str) -> None:
  bar_end = '\n' if jax.process_index() == 0 else ''  # process 0's progress bar is open
  print(f'{bar_end}error: process {jax.process_index()} of {jax.process_count()} stops: {reason} '
        '(see its log); rerun the same command on every process to resume from the last '
        'checkpoint', file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(1)  # pylint: disable=protected-access
