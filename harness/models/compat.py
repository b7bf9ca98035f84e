"""The one place where the PyPI package ``pyautoattack`` is made importable as ``autoattack``.

robustbench 1.1.1 does ``from autoattack import AutoAttack`` (the GitHub package's name), while the
package on PyPI is ``pyautoattack``. Import this module before anything from robustbench.
"""
from __future__ import annotations

import sys
import warnings

import pyautoattack
import pyautoattack.state

sys.modules.setdefault("autoattack", pyautoattack)
sys.modules.setdefault("autoattack.state", pyautoattack.state)

# robustbench imports pkg_resources (hence setuptools<81), which warns on import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=".*torch.jit.interface.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
