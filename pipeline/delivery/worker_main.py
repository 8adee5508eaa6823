"""A processing worker process: ``python -m pipeline.delivery.worker_main FD``.

Started by :class:`pipeline.delivery.workers.WorkerPool` with FD its end of a socketpair; a
module of its own (not ``-m pipeline.delivery.workers``) so the pool's module is imported once,
under its own name, and the functions the parent names in its frames are the ones that run.
"""

import sys


def main() -> None:
    from pipeline.delivery.workers import worker_main

    worker_main(int(sys.argv[1]))


if __name__ == "__main__":
    main()
