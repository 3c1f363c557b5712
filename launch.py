#!/usr/bin/env python3
"""Entry point: `python launch.py --config model_configs/demo.yaml` serves; `python launch.py check ...` validates."""

import sys

from server.cli import main

if __name__ == "__main__":
    sys.exit(main())
