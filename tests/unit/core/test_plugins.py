"""harness.core.plugins: entry points of installed distributions register into the registries, once;
a plug-in that fails is a one-line error naming it; ROBUST_FRONTIER_PLUGINS=0 turns them off."""
from __future__ import annotations

import sys

import pytest
from helpers.plugin_pkg import write_dist_info

from harness.core import plugins
from harness.core.errors import HarnessError

GOOD = '''
CALLS = []

def register():
    from harness.certifiers.base import Certifier
    from harness.certifiers.registry import register as add

    class Nothing(Certifier):
        name = "toy-nothing"
        sound = True
        norms = ("Linf", "L2")

    CALLS.append(1)
    add(Nothing())
'''


@pytest.fixture
def site(tmp_path, monkeypatch):
    from harness.certifiers import registry

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(plugins, "_loaded", {})
    yield tmp_path / "site"
    registry.unregister("toy-nothing")
    for m in ("rf_good", "rf_bad"):
        sys.modules.pop(m, None)


def test_an_installed_certifier_is_in_the_registry_once(site):
    write_dist_info(site, dist="rf-good", module="rf_good", body=GOOD)
    from harness.certifiers import registry

    assert "toy-nothing" in registry.names() and registry.is_sound("toy-nothing")
    assert "toy-nothing" in registry.sound_names()
    registry.names()
    assert sys.modules["rf_good"].CALLS == [1]  # loaded once per process
    assert plugins.loaded() == {"certifiers": ["toy = rf_good:register"]}


def test_a_failing_plugin_is_one_line_naming_it(site):
    body = "def register():\n    raise RuntimeError('boom\\nsecond')\n"
    write_dist_info(site, dist="rf-bad", module="rf_bad", body=body)
    from harness.certifiers import registry

    with pytest.raises(HarnessError) as e:
        registry.names()
    msg = str(e.value)
    assert "\n" not in msg and "rf_bad:register" in msg and "RuntimeError: boom" in msg


def test_plugins_can_be_turned_off(site, monkeypatch):
    write_dist_info(site, dist="rf-good", module="rf_good", body=GOOD)
    monkeypatch.setenv("ROBUST_FRONTIER_PLUGINS", "0")
    from harness.certifiers import registry

    assert "toy-nothing" not in registry.names()
    assert plugins.installed_groups() == set()
