"""``mvmlm info``: package versions and whether CUDA, the mamba-ssm scan kernel and vLLM are usable here."""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass

from mvmlm.rundir import git_commit, package_versions

__all__ = ["environment_report", "main"]


def _probe_import(module: str) -> tuple[bool, str]:
    """Import ``module``; any exception means unusable (mamba-ssm can install yet fail to import)."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return False, "not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - an optional extension may fail in many ways
        return False, f"import failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return True, "ok"


def environment_report() -> dict:
    """What this machine can run: versions, CUDA devices, bf16, mamba-ssm kernel, vLLM."""
    import torch

    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    kernel_ok, kernel_why = _probe_import("selective_scan_cuda")
    vllm_ok, vllm_why = _probe_import("vllm") if importlib.util.find_spec("vllm") else (False, "not installed")
    return {
        "packages": package_versions(),
        "git_commit": git_commit(),
        "cuda": {
            "available": cuda,
            "torch_cuda": torch.version.cuda,
            "devices": devices,
            "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        },
        "mamba_ssm_kernel": {
            "usable": kernel_ok and cuda,
            "detail": kernel_why if kernel_ok or not cuda else "no CUDA",
        },
        "vllm": {"usable": vllm_ok and cuda, "detail": vllm_why if not vllm_ok else ("ok" if cuda else "no CUDA")},
    }


@dataclass
class InfoConfig:
    json: bool = False  # print machine-readable JSON instead of a table


def main(argv: list[str] | None = None) -> dict:
    """Print the environment report."""
    from mvmlm.commands import INFO

    cfg = INFO.parse(argv)
    report = environment_report()
    if cfg.json:
        print(json.dumps(report, indent=2))
        return report
    for name, version in report["packages"].items():
        print(f"{name:<20} {version or '-'}")
    print(f"{'git commit':<20} {report['git_commit'] or '-'}")
    cuda = report["cuda"]
    print(f"{'CUDA':<20} {'yes: ' + ', '.join(cuda['devices']) if cuda['available'] else 'no'} (bf16: {cuda['bf16']})")
    for key, label in (("mamba_ssm_kernel", "mamba-ssm kernel"), ("vllm", "vLLM")):
        entry = report[key]
        print(f"{label:<20} {'usable' if entry['usable'] else 'not usable'} ({entry['detail']})")
    return report
