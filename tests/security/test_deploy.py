"""The nginx configuration agrees with the application: TLS 1.3 only, HTTP/2, body limits equal
to the settings' defaults, unbuffered streaming routes, upload routes with the upload limit.
Where an nginx binary is installed, ``nginx -t`` also validates the file (with a throwaway
self-signed certificate)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from enclava.config import Settings
from enclava.security.routes import is_content_route, is_upload_route

CONF = Path(__file__).parents[2] / "deploy" / "nginx" / "enclava.conf"
SOME_ID = "3f1c9a8e-5b7d-4c2e-9a1f-0d6b8e2c4a10"


def directives(block: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;]+);", block, re.M)]


def locations(config: str) -> dict[str, str]:
    """Regex locations: pattern -> body (the file has no nested braces inside locations)."""
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"location ~ (\S+) \{(.*?)\n    \}", config, re.S)
    }


def size_in_bytes(value: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(value[:-1]) * units[value[-1].lower()] if value[-1].isalpha() else int(value)


def test_tls_http2_and_forwarding() -> None:
    config = CONF.read_text()
    assert directives(config, "ssl_protocols") == ["TLSv1.3"]
    assert "listen 443 ssl http2" in config
    assert directives(config, "ssl_early_data") == ["off"]
    assert "return 301 https://$host$request_uri" in config
    for header in ("X-Forwarded-Proto $scheme", "X-Forwarded-For $remote_addr", "Host $host"):
        assert f"proxy_set_header {header}" in config
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert f"server {defaults.host}:{defaults.port};" in config
    assert defaults.host in defaults.forwarded_allow_ips.split(",")


def test_limits_and_routes_match_the_application() -> None:
    config = CONF.read_text()
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    server_level = config.split("location")[0]
    assert [size_in_bytes(v) for v in directives(server_level, "client_max_body_size")] == [
        defaults.max_request_body_bytes
    ]
    found = locations(config)
    streaming = next(body for pattern, body in found.items() if "chat/completions" in pattern)
    assert "proxy_buffering off" in streaming
    assert int(directives(streaming, "proxy_read_timeout")[0].rstrip("s")) >= 300
    stream_pattern = next(p for p in found if "chat/completions" in p)
    for path in (
        "/api/v1/chat/completions",
        f"/api/v1/chatbot/{SOME_ID}/chat/completions",
        f"/api-internal/v1/chatbots/{SOME_ID}/chat",
    ):
        assert re.match(stream_pattern, path), path
        assert is_content_route(path)
    upload_pattern, upload = next((p, b) for p, b in found.items() if "documents" in p)
    assert [size_in_bytes(v) for v in directives(upload, "client_max_body_size")] == [
        defaults.max_upload_bytes
    ]
    assert "proxy_request_buffering off" in upload
    for prefix in ("/api/v1", "/api-internal/v1"):
        for path in (f"{prefix}/rag/collections/{SOME_ID}/documents", f"{prefix}/rag/documents"):
            assert re.match(upload_pattern, path) and is_upload_route(path), path
    assert not re.match(upload_pattern, f"/api/v1/rag/documents/{SOME_ID}")


def test_nginx_accepts_the_file(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        # No nginx here: the structural checks above still hold; docs/deployment.md records
        # the `nginx -t` run on a machine with nginx 1.22.
        assert CONF.read_text().count("{") == CONF.read_text().count("}")
        return
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=enclava.test", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    site = CONF.read_text()
    site = site.replace("/etc/ssl/enclava/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/ssl/enclava/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "enclava.conf").write_text(site)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{\n    access_log off;\n{temp_paths}\n    include {tmp_path / 'enclava.conf'};\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
