"""The first code inside the sandbox: set the resource limits, then run the snippet.

hare/sandbox/runner.py hands this file to the sandbox read-only and starts it as
``python -I -S child.py LIMITS_JSON WORKDIR`` (no site-packages, no environment). Limits are
set here, before the snippet's first line, because Python's ``subprocess`` can only set them
from a ``preexec_fn`` that is unsafe in a threaded worker; once lowered, the snippet cannot
raise them (that needs CAP_SYS_RESOURCE in the host's user namespace). Nothing here is a
guard against the snippet: the isolation is the OS's (namespaces, seccomp), and what was
applied is reported by the parent, never by this process.
"""

import json
import os
import resource
import runpy
import sys


def main() -> None:
    limits = json.loads(sys.argv[1])
    workdir = sys.argv[2]
    mb = 1024 * 1024
    for res, value in ((resource.RLIMIT_AS, int(limits["memory_mb"]) * mb),
                       (resource.RLIMIT_CPU, int(limits["cpu_s"])),
                       (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * mb),
                       (resource.RLIMIT_NPROC, int(limits["max_processes"])),
                       (resource.RLIMIT_NOFILE, 64),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    os.chdir(workdir)
    sys.argv = ["main.py"]
    sys.path.insert(0, workdir)
    runpy.run_path(os.path.join(workdir, "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
