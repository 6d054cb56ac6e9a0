"""One override style on the command line: every command with a config takes --set KEY=VALUE,
checked against the config's fields (nfldm.config.with_overrides)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nfldm.cli import main
from nfldm.config import with_overrides


@dataclass
class Cfg:
    steps: int = 3
    flag: bool = False
    name: str = "a"


def test_with_overrides_sets_fields_parses_switches_and_refuses_unknown_keys():
    c = with_overrides(Cfg(), {"steps": 7, "flag": "yes"}, "demo")
    assert (c.steps, c.flag, c.name) == (7, True, "a") and Cfg().steps == 3
    with pytest.raises(ValueError, match=r"unknown demo option\(s\) \['nope'\]; known: flag, name, steps"):
        with_overrides(Cfg(), {"nope": 1}, "demo")
    with pytest.raises(ValueError, match="switch"):
        with_overrides(Cfg(), {"flag": "maybe"}, "demo")


@pytest.mark.parametrize("argv, what", [
    (["data", "vizdoom", "--out", "{tmp}/d", "--set", "bogus=1"], "data vizdoom"),
    (["quickstart", "--smoke", "--out", "{tmp}/q", "--set", "bogus=1"], "quickstart"),
])
def test_set_on_data_and_quickstart_refuses_unknown_keys_in_one_line(argv, what, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and f"unknown {what} option(s) ['bogus']" in err[0]
    assert not (tmp_path / "d").exists() and not (tmp_path / "q").exists()
