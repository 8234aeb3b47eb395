import sys

from device import service

if "run" in sys.argv[1:3]:  # the daemon: signal handlers before the imports and the argument parsing
    service.signals()

from device.cli import main  # noqa: E402

sys.exit(main())
