from __future__ import annotations

import importlib.util

from mvmlm import info


def test_info_reports_versions_and_unusable_optional_extras(capsys):
    report = info.main([])
    out = capsys.readouterr().out
    assert "torch" in out and "mamba-ssm kernel" in out and "vLLM" in out
    assert report["packages"]["pydicom"].startswith("3.")
    if importlib.util.find_spec("vllm") is None:
        assert report["vllm"] == {"usable": False, "detail": "not installed"}
    if not report["cuda"]["available"]:
        assert report["mamba_ssm_kernel"]["usable"] is False
