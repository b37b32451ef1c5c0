from __future__ import annotations

import pytest

from avssl.errors import AvsslError, UnknownNameError
from avssl.registry import Registry


def test_register_get_and_list():
    reg = Registry("widget")

    @reg.register()
    def alpha():
        return 1

    reg.add("beta_large", lambda: 2)
    assert reg.get("alpha") is alpha and reg.get("beta_large")() == 2
    assert reg.names() == ["alpha", "beta_large"] and "alpha" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("alpha", alpha)


def test_unknown_name_suggests_close_matches():
    reg = Registry("encoder")
    for n in ["r3d18", "r2plus1d18", "vivit_fe_tiny", "vivit_fsa_tiny"]:
        reg.add(n, object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("r3d81")
    msg = str(e.value)
    assert "unknown encoder 'r3d81'" in msg and "did you mean: r3d18" in msg and "\n" not in msg
    assert isinstance(e.value, AvsslError)
    with pytest.raises(UnknownNameError, match="did you mean: vivit_fe_tiny, vivit_fsa_tiny"):
        reg.get("vivit")
