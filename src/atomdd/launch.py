"""`python -m atomdd.launch …`: torchrun (the same arguments), ending with one line and a status.

torchrun's agent passes SIGTERM, SIGINT and SIGHUP on to its ranks, which stop cleanly (a
distillation checkpoints first, `signals.py`), and then raises a `SignalException` of its own: a
25-line traceback and status 1, which a scheduler stopping the job reads as a crash (issue 29: 9).
A rank that fails ends torchrun with a traceback too. Here either ends with one line: status
128 + the signal, or the failed rank's own status (2 for a user error, whose message it printed).
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"atomdd: torchrun stopped on {name}, after asking its ranks to stop", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: killed
        print(f"atomdd: rank {rank} ended with status {code}; torchrun stopped the others", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
