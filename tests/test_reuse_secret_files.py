"""A ``--secret-file`` mounted on this machine is a secret under reuse as in a run: never stored, masked."""

from __future__ import annotations

from helpers.shell import run_ok

TOKEN = "file-tok-7c1e9a4d"


def _mount(tmp_path):
    """A folder laid out as Kubernetes mounts a secret: one file per key."""
    folder = tmp_path / "creds"
    folder.mkdir()
    (folder / "token").write_text(TOKEN + "\n")
    return folder


def _no_token_in(home):
    for path in (home / "store").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_a_secret_file_read_by_a_step_is_never_stored(ip, nbmagic_home, tmp_path, capsys):
    folder = _mount(tmp_path)
    run_ok(ip, "%pipeline_config --reuse")
    cell = f"%%step s --secret-file creds:{folder}\ntok = open({str(folder / 'token')!r}).read().strip()\nn = 3\n"
    run_ok(ip, cell)
    assert "variable 'tok' holds a secret" in capsys.readouterr().out
    ip.user_ns.pop("tok")
    run_ok(ip, cell)  # not reused: the secret was not kept
    assert "reused from run" not in capsys.readouterr().out and ip.user_ns["tok"] == TOKEN
    _no_token_in(nbmagic_home)


def test_what_a_step_prints_from_a_secret_file_is_masked_when_kept_and_replayed(ip, nbmagic_home, tmp_path, capsys):
    folder = _mount(tmp_path)
    run_ok(ip, "%pipeline_config --reuse")
    cell = f"%%step s --secret-file creds:{folder}\nprint('token', open({str(folder / 'token')!r}).read())\nn = 3\n"
    run_ok(ip, cell)
    assert TOKEN in capsys.readouterr().out  # shown live, as any cell shows it
    _no_token_in(nbmagic_home)
    ip.user_ns.pop("n")
    run_ok(ip, cell)
    out = capsys.readouterr().out
    assert "s: reused from run" in out and ip.user_ns["n"] == 3
    assert "token ***" in out and TOKEN not in out


def test_a_run_masks_a_secret_file_in_its_log_and_never_stores_it(ip, nbmagic_home, tmp_path):
    folder = _mount(tmp_path)
    path = str(folder / "token")
    run_ok(ip, f"%%step s --secret-file creds:{folder}\ntok = open({path!r}).read()\nprint('token', tok)\nn = 3\n")
    run = run_ok(ip, "%compile_run --quiet")
    assert run.steps["s"].status == "done"
    _no_token_in(nbmagic_home)
    logs = list((nbmagic_home / "store").rglob("s.log"))
    assert logs and all("token ***" in p.read_text() for p in logs), [p.read_text() for p in logs]
