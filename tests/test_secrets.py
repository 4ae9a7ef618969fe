"""No API key or URL password reaches a file medjp writes or the terminal (issue 15, item 8): real `medjp eval` and
`medjp search` processes against the loopback stub, then every written byte and every printed line is searched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medjp_agent.redact import MASK, redact_argv, redact_text, remember
from openai_server import FixedReply, OpenAIServer

KEY = "sk-MEDJPKEYMARKER-7f3a9"
PASSWORD = "PWMARKER91"
MEDJP = str(Path(sys.executable).parent / "medjp")


def test_redact_argv_masks_secret_flags_and_url_credentials_only():
    argv = ["medjp", "eval", "--api-key", "k1-secret", "--api-key=k2-secret", "--max-new-tokens", "64",
            "--api-base", "http://me:pw@gpu:8000/v1", "--storage", "postgresql://db-user:pw@db/x", "--model", "m"]
    assert redact_argv(argv) == ("medjp", "eval", "--api-key", MASK, f"--api-key={MASK}", "--max-new-tokens", "64",
                                 "--api-base", f"http://me:{MASK}@gpu:8000/v1", "--storage",
                                 f"postgresql://db-user:{MASK}@db/x", "--model", "m")


def test_redact_text_masks_tokens_in_urls_query_secrets_and_remembered_values():
    remember("sk-remembered-123")
    text = "GET http://tok123@h/v1?api_key=abc&x=1 failed for sk-remembered-123"
    assert redact_text(text) == f"GET http://{MASK}@h/v1?api_key={MASK}&x=1 failed for {MASK}"


def leaks(root: Path) -> list[str]:
    """Files under ``root`` (any name, binary included: SQLite, caches) holding the key or the password."""
    return [str(p) for p in root.rglob("*") if p.is_file() and (KEY.encode() in p.read_bytes()
                                                                 or PASSWORD.encode() in p.read_bytes())]


@pytest.mark.slow
def test_eval_and_search_never_write_or_print_the_key_or_a_url_password(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MEDJP_HOME": str(tmp_path / "home"),
           "DSPY_CACHEDIR": str(tmp_path / "home" / "dspy"), "COLUMNS": "200"}
    env.pop("MEDJP_API_KEY", None)
    with OpenAIServer(FixedReply("答え：a"), "stub") as server:
        base = server.url.replace("http://", f"http://user:{PASSWORD}@")
        common = ["--data", "sample", "--api-base", base, "--model", "stub", "--api-retries", "0"]
        runs = [
            subprocess.run([MEDJP, "eval", *common, "--api-key", KEY, "--limit", "4", "--out", "runs/eval"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300),
            subprocess.run([MEDJP, "search", *common, f"--api-key={KEY}", "--n-trials", "2", "--no-tui",
                            "--out", "runs/search"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300),
        ]
        server.inject("400")  # a refused request: its error message quotes the URL
        runs.append(subprocess.run([MEDJP, "eval", *common, "--no-cache", "--limit", "1", "--out", "runs/refused"],
                                   cwd=tmp_path, env={**env, "MEDJP_API_KEY": KEY}, capture_output=True, text=True,
                                   timeout=300))
    assert [r.returncode for r in runs[:2]] == [0, 0], [r.stderr for r in runs]
    assert runs[2].returncode != 0 and "refused the request" in runs[2].stderr, runs[2].stderr
    assert server.requests  # the commands really talked to the server
    for run in runs:
        assert KEY not in run.stdout + run.stderr and PASSWORD not in run.stdout + run.stderr
    assert leaks(tmp_path) == []
    manifest = json.loads((tmp_path / "runs" / "eval" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["command"][-6:-4] == ["--api-key", MASK]  # the command is recorded, masked
    assert f"user:{MASK}@" in manifest["backend"]
    assert (tmp_path / "runs" / "search" / "study.db").exists()  # searched too: the study's attrs were written


def test_a_storage_password_is_recorded_masked_and_reopened_without_it(tmp_path: Path):
    from medjp_agent.optimizers import search_storage_url
    from medjp_agent.results import RunManifest, RunWriter

    url = f"postgresql://medjp:{PASSWORD}@db.example:5432/studies"
    RunWriter(tmp_path / "search", RunManifest(name="s", kind="search", data="sample", extra={"storage": url}))
    recorded = json.loads((tmp_path / "search" / "manifest.json").read_text(encoding="utf-8"))["extra"]["storage"]
    assert recorded == f"postgresql://medjp:{MASK}@db.example:5432/studies"
    # Reopened for `medjp report`, the driver takes the password from PGPASSWORD or ~/.pgpass.
    assert search_storage_url(tmp_path / "search", recorded) == "postgresql://medjp@db.example:5432/studies"
