"""Runs one command as N local JAX processes (gloo collectives on CPU): a multi-host run
on one machine, used by the tests and for debugging multi-host code paths.

  python launch/local.py --num_processes 2 --devices_per_process 4 -- \\
      python -m dvlm_jax.train --config experiments/tiny.py --workdir runs/mh

Each process gets DVLM_COORDINATOR / DVLM_NUM_PROCESSES / DVLM_PROCESS_ID (read by
dvlm_jax.distributed) and its own fake CPU devices. Process 0 prints to the console, the
others to WORKDIR-less log files `launch_logs/process_I.log`. SIGTERM/SIGINT are forwarded
to every process; the first failure ends the others; the exit code is the first non-zero.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(command: list[str], num_processes: int, devices_per_process: int = 1,
           log_dir: str = 'launch_logs', env: dict | None = None) -> int:
  port = free_port()
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  for i in range(num_processes):
    penv = dict(os.environ if env is None else env,
                DVLM_COORDINATOR=f'127.0.0.1:{port}', DVLM_NUM_PROCESSES=str(num_processes),
                DVLM_PROCESS_ID=str(i), JAX_PLATFORMS='cpu',
                XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
    out = None
    if i > 0:
      out = open(os.path.join(log_dir, f'process_{i}.log'), 'w')
      logs.append(out)
    procs.append(subprocess.Popen(command, env=penv, stdout=out, stderr=subprocess.STDOUT if out else None))

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  code = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed and not code:
      code = failed[0]
      time.sleep(5)                    # let the others notice; then end them
      for p in procs:
        if p.poll() is None:
          p.kill()
    time.sleep(0.1)
  for f in logs:
    f.close()
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '--' not in argv:
    print('usage: launch/local.py --num_processes N [--devices_per_process K] -- COMMAND ...',
          file=sys.stderr)
    return 2
  split = argv.index('--')
  parser = argparse.ArgumentParser()
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--log_dir', default='launch_logs')
  args = parser.parse_args(argv[:split])
  return launch(argv[split + 1:], args.num_processes, args.devices_per_process, args.log_dir)


if __name__ == '__main__':
  sys.exit(main())
