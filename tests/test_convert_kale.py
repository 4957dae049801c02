"""nbmagic convert --from-kale: Kale's cell tags become magics, and the converted notebook computes what the
Kale notebook computed top to bottom."""

from __future__ import annotations

import json

import nbformat
import pytest

from helpers.fidelity import cli, cli_metrics, execute, write_notebook
from nbmagic.convert.kale import convert_kale
from nbmagic.errors import NbMagicError

TITANIC = [
    ("import numpy as np\nimport pandas as pd\n", ["imports"]),
    ("from sklearn.linear_model import LogisticRegression\n", None),  # continues the imports
    ("SEED = 0\n\n\ndef title_of(name):\n    return name.split(',')[1].split('.')[0].strip()\n", ["functions"]),
    ("C = 1.0\n", ["pipeline-parameters"]),
    (
        """rng = np.random.RandomState(7)
titles = ['Mr', 'Mrs', 'Miss', 'Master']
def people(n):
    return pd.DataFrame({
        'Name': [f'Doe{i}, {titles[i % 4]}. John' for i in range(n)],
        'Sex': rng.choice(['male', 'female'], n),
        'SibSp': rng.randint(0, 4, n),
        'Survived': rng.randint(0, 2, n),
    })
train = people(80)
test = people(20)
""",
        ["block:load_data"],
    ),
    (
        "for dataset in [train, test]:\n    dataset['Title'] = dataset['Name'].map(title_of)\n",
        ["block:featureengineering", "prev:load_data"],
    ),
    (
        "for dataset in [train, test]:\n"
        "    dataset['Sex'] = dataset['Sex'].map({'female': 1, 'male': 0})\n"
        "    dataset['Family'] = dataset['SibSp'] + 1\n",
        None,
    ),
    ("train.drop(columns=['Name'], inplace=True)\ntest.drop(columns=['Name'], inplace=True)\n", None),
    (
        "X = pd.get_dummies(train[['Sex', 'Family', 'Title']]).astype(float)\n"
        "model = LogisticRegression(C=C, random_state=SEED, max_iter=500).fit(X, train['Survived'])\n"
        "acc = float(model.score(X, train['Survived']))\n",
        ["block:train", "prev:featureengineering", "limit:nvidia.com/gpu:1"],
    ),
    ("n_test = len(test.columns)\n", ["block:evaluate", "prev:train"]),
    ("print(acc)\nprint(n_test)\n", ["pipeline-metrics"]),
    ("import json\njson.dump({'acc': acc, 'n_test': n_test}, open('expected.json', 'w'))\n", ["skip"]),
]


def test_tags_become_magics(tmp_path):
    source = write_notebook(tmp_path / "kale.ipynb", TITANIC)
    notes = convert_kale(source, tmp_path / "out.ipynb")
    cells = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells
    sources = [c.source for c in cells]
    assert sources[0].startswith("import numpy") and sources[1].startswith("from sklearn")
    assert sources[3] == "%%pipeline_parameters\nC = 1.0\n"
    assert sources[4].startswith("%%step load_data\n")
    assert sources[5].startswith("%%step featureengineering --after load_data\nfor dataset")
    assert sources[6].startswith("%%step featureengineering\n") and sources[7].startswith("%%step featureengineering\n")
    assert sources[8].startswith("%%step train --after featureengineering --gpu 1\n")
    assert sources[10] == "%pipeline_metrics acc n_test"
    assert cells[11].cell_type == "raw" and "json.dump" in sources[11]
    assert all(c.get("id") for c in cells) and not any("tags" in c.metadata for c in cells)
    assert notes[-1].startswith("converted 4 steps, 2 metrics")


def test_serve_image_and_tags_without_an_equivalent(tmp_path):
    source = write_notebook(
        tmp_path / "kale.ipynb",
        [
            ("x = 1\n", ["block:make", "image:python:3.11-slim", "annotation:team:ml"]),
            ("from kale.common.serveutils import serve\nserver = serve(x)\n", ["block:ship", "prev:make"]),
        ],
    )
    notes = convert_kale(source, tmp_path / "out.ipynb")
    first, second = [c.source for c in nbformat.read(str(tmp_path / "out.ipynb"), as_version=4).cells]
    assert first.startswith("%%step make --image python:3.11-slim\n# Kale tag 'annotation:team:ml'")
    assert "run `%serve x` in its own cell" in second and "import serve" not in second.replace("# ", "")
    assert any("'annotation:team:ml' has no nbmagic equivalent" in note for note in notes)


@pytest.mark.parametrize(
    "tags, message",
    [
        (["block:a", "prev:nowhere"], "prev:nowhere names a step not defined above"),
        (["whatever"], "unknown Kale tag 'whatever'"),
    ],
)
def test_bad_tags_are_one_clear_error(tmp_path, tags, message):
    source = write_notebook(tmp_path / "kale.ipynb", [("x = 1\n", tags)])
    with pytest.raises(NbMagicError, match=message):
        convert_kale(source, tmp_path / "out.ipynb")


@pytest.mark.slow
def test_the_converted_notebook_gives_the_kale_notebooks_metrics(tmp_path, monkeypatch):
    source = write_notebook(tmp_path / "kale.ipynb", TITANIC)
    execute(source, monkeypatch, with_file=False)  # Kale's notebook, top to bottom, in a plain kernel
    expected = json.loads((tmp_path / "expected.json").read_text())

    converted = cli("convert", "--from-kale", "kale.ipynb", "-o", "converted.ipynb", cwd=tmp_path)
    assert converted.returncode == 0, converted.stderr
    ran = cli("run", "converted.ipynb", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert cli_metrics(ran.stdout) == pytest.approx(expected)
    assert "step 'featureengineering' changes train in place" in ran.stdout
