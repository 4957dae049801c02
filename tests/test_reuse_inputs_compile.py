"""--inputs files in compiled pipelines: the file's content hash is compiled into the step's component (so KFP's
cache key follows the file), the component checks the file where it runs, and compiling for a cluster says that
its pods must find the file."""

from __future__ import annotations

import pytest

from helpers.shell import run_ok
from nbmagic.errors import PipelineError
from nbmagic.pipeline.cells import RawCell, read_cells
from nbmagic.pipeline.plan import build_plan

CELLS = (
    "%%step read_raw --inputs raw.csv\nwith open('raw.csv') as f:\n    n_raw = len(f.read().split())\n",
    "%%step report\ntotal = n_raw * 2\n",
    "%pipeline_metrics total\n",
)


def plan_of(*sources: str):
    cells = [RawCell(source, i, f"cell {i}", f"id{i}") for i, source in enumerate(sources, start=1)]
    return build_plan(read_cells(cells))


def _component_of(yaml_text: str, step: str) -> str:
    """The executor spec of ``step``'s component in compiled KFP IR (its code and arguments)."""
    import yaml

    spec = next(iter(yaml.safe_load_all(yaml_text)))
    executors = spec["deploymentSpec"]["executors"]
    return yaml.safe_dump(next(v for k, v in executors.items() if step.replace("_", "-") in k))


@pytest.mark.slow
def test_the_file_hash_is_compiled_in_and_checked_where_the_step_runs(tmp_path, monkeypatch, capfd):
    from kfp import components, local

    from helpers.kfp_outputs import metrics_from_outputs
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.runtime.files import file_hashes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.csv").write_text("a b c\n")
    plan = plan_of(*CELLS)
    first = compile_pipeline(plan, output=tmp_path / "p.yaml")
    digest = file_hashes(["raw.csv"], "sha256")["raw.csv"]
    assert digest in _component_of(first, "read_raw") and digest not in _component_of(first, "report")

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    task = components.load_component_from_file(str(tmp_path / "p.yaml"))()
    assert metrics_from_outputs(plan, task) == {"total": 6}

    (tmp_path / "raw.csv").write_text("a b c d\n")  # changed after compiling: the step stops, never a stale key
    capfd.readouterr()
    with pytest.raises(RuntimeError):
        components.load_component_from_file(str(tmp_path / "p.yaml"))()
    out = capfd.readouterr()
    assert "nbmagic: step 'read_raw': --inputs raw.csv is not the file the pipeline was compiled with" in (
        out.out + out.err
    )
    again = compile_pipeline(plan)  # compiled again: the component's code (KFP's cache key) follows the file
    assert _component_of(again, "read_raw") != _component_of(first, "read_raw")
    assert _component_of(again, "report") == _component_of(first, "report")

    (tmp_path / "raw.csv").unlink()  # where the file is not (a cluster's pod): one line says so
    with pytest.raises(RuntimeError):
        components.load_component_from_file(str(tmp_path / "p.yaml"))()
    out = capfd.readouterr()
    assert "nbmagic: step 'read_raw': --inputs raw.csv: no such file or folder where the step runs" in (
        out.out + out.err
    )


def test_a_missing_file_stops_the_compile_naming_step_and_file(tmp_path, monkeypatch):
    from nbmagic.compile.kfp import compile_pipeline

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"^step 'read_raw' --inputs raw.csv: no such file or folder$"):
        compile_pipeline(plan_of(*CELLS))


def test_compiling_for_a_cluster_says_the_pods_must_find_the_file(ip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.csv").write_text("a b c\n")
    for cell in CELLS:
        run_ok(ip, cell)
    capsys.readouterr()
    run_ok(ip, f"%compile_run --output {tmp_path / 'p.yaml'} --no-run")
    out = capsys.readouterr().out
    assert "nbmagic: --inputs files are read where each step runs: read_raw (raw.csv). A cluster's pods find" in out
    assert (tmp_path / "p.yaml").exists()
    run_ok(ip, "%%step report\ntotal = n_raw * 3\n")  # a local run says nothing about clusters
    run_ok(ip, "run = %compile_run --quiet")
    assert "--inputs files" not in capsys.readouterr().out


def test_nbmagic_compile_hashes_inputs_beside_the_notebook_and_says_pods_must_find_them(tmp_path):
    from helpers.fidelity import cli, write_notebook

    folder = tmp_path / "nb"
    folder.mkdir()
    (folder / "raw.csv").write_text("a b c\n")
    write_notebook(folder / "n.ipynb", ["%load_ext nbmagic", *CELLS])
    done = cli("compile", "nb/n.ipynb", "-o", "p.yaml", cwd=tmp_path)  # typed from another folder
    assert done.returncode == 0, done.stderr
    assert "nbmagic: --inputs files are read where each step runs: read_raw (raw.csv)." in done.stdout
    assert (tmp_path / "p.yaml").exists()


def test_local_steps_read_relative_files_where_the_run_was_started(tmp_path, monkeypatch):
    """The step worker outlives a change of folder (``%cd``): each step runs in the caller's folder, so an
    ``--inputs`` file is read where its hash was taken."""
    from nbmagic.run.local import LocalRunner

    plan = plan_of(*CELLS)
    for folder, text in (("a", "a b c\n"), ("b", "a b c d e\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "raw.csv").write_text(text)
        monkeypatch.chdir(tmp_path / folder)
        run = LocalRunner(workers=1).run(plan)
        assert run.status == "done", run.error
        assert run.metrics["total"] == 2 * len(text.split())


@pytest.mark.slow
def test_in_nbmagics_image_the_executor_carries_and_checks_the_file_hash(tmp_path, monkeypatch, capfd):
    """A step in an image that has nbmagic is a container component: the hash is in its arguments and its
    executor checks the file (kfp.local's DockerRunner, each container run as a process of this environment)."""
    from kfp import components, local

    from helpers.kfp_image import run_containers_here
    from helpers.kfp_outputs import metrics_from_outputs
    from nbmagic.compile.kfp import compile_pipeline
    from nbmagic.runtime.files import file_hashes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.csv").write_text("a b c\n")
    image = "registry.example/nbmagic:test"
    plan = plan_of(*CELLS)
    text = compile_pipeline(plan, output=tmp_path / "image.yaml", image=image, runtime_image=image)
    component = _component_of(text, "read_raw")
    assert "nbmagic.runtime.executor" in component
    assert file_hashes(["raw.csv"], "sha256")["raw.csv"] in component

    run_containers_here(monkeypatch)
    local.init(runner=local.DockerRunner(), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    task = components.load_component_from_file(str(tmp_path / "image.yaml"))()
    assert metrics_from_outputs(plan, task) == {"total": 6}
    (tmp_path / "raw.csv").write_text("a b c d\n")
    capfd.readouterr()
    with pytest.raises(RuntimeError):
        components.load_component_from_file(str(tmp_path / "image.yaml"))()
    out = capfd.readouterr()
    assert "nbmagic: step 'read_raw': --inputs raw.csv is not the file the pipeline was compiled with" in (
        out.out + out.err
    )
