"""The sglang package is never imported unless the sglang backend is chosen (nor triton unless its kernels are)."""

from __future__ import annotations

import subprocess
import sys


def test_default_server_never_imports_sglang():
    code = ("import sys, server.cli, server.api.app, server.backends, server.backends.torch_backend;"
            "import server.local_model, server.build;"
            "from server.backends import resolve_backend_kind; resolve_backend_kind('auto', 'cpu');"
            "assert 'sglang' not in sys.modules, 'sglang imported';"
            "assert 'triton' not in sys.modules, 'triton imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_sglang_backend_module_imports_without_sglang():
    code = "import sys, server.backends.sglang_backend; assert 'sglang' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
