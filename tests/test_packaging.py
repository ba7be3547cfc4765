"""What ships, and what ``import signalbus`` costs (DESIGN.md, "Layout").

The wheel is built once per session from this checkout, with the installed
hatchling (no network), and inspected as a user's ``pip install`` would get it.
"""

from __future__ import annotations

import configparser
import importlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("signalbus", "brokers", "bridges")
HEAVY = ("zmq", "pika", "starlette", "uvicorn", "celery", "prometheus_client")


def run_python(code: str, *, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- import cost --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "import signalbus; signalbus.Event.create('a.b').encode()",
        "import signalbus.conf, signalbus.hub, signalbus.codec, signalbus.topics",
        "import brokers.registry, brokers.base, brokers.memory, brokers.zeromq",
    ],
)
def test_import_loads_no_broker_or_web_library(statement: str) -> None:
    loaded = run_python(
        f"{statement}\n"
        "import json, sys\n"
        "print(json.dumps(sorted({name.partition('.')[0] for name in sys.modules})))\n"
    )
    heavy = sorted(set(json.loads(loaded)) & set(HEAVY))
    assert heavy == [], f"{statement!r} imported {heavy}"


def test_the_import_check_would_see_a_heavy_import() -> None:
    loaded = json.loads(run_python("import zmq, json, sys; print(json.dumps(sorted(sys.modules)))"))
    assert "zmq" in loaded


# -- the wheel ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("signalbus-*.whl")
    return built


@pytest.fixture(scope="session")
def wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def dist_info_file(wheel: Path, names: list[str], filename: str) -> str:
    (path,) = [n for n in names if n.endswith(f".dist-info/{filename}")]
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(path).decode()


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_holds_each_package_with_its_py_typed(wheel_names: list[str], package: str) -> None:
    assert f"{package}/__init__.py" in wheel_names
    assert f"{package}/py.typed" in wheel_names
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / package).glob("*.py")}
    assert source <= set(wheel_names)


def test_wheel_has_only_the_three_packages_at_top_level(wheel_names: list[str]) -> None:
    top = {name.split("/")[0] for name in wheel_names}
    top = {name for name in top if not name.endswith(".dist-info")}
    assert top == set(PACKAGES)


def test_wheel_holds_no_tests_and_no_bytecode(wheel_names: list[str]) -> None:
    assert not [n for n in wheel_names if n.startswith("tests/") or "/tests/" in n]
    assert not [n for n in wheel_names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_holds_the_example_project_under_signalbus(wheel_names: list[str]) -> None:
    example = ROOT / "example"
    files = [
        p.relative_to(example).as_posix()
        for p in example.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    if not files:
        pytest.skip("example/ has no files yet: nothing to find under signalbus/example/")
    shipped = {n.removeprefix("signalbus/example/") for n in wheel_names}
    missing = sorted(set(files) - shipped)
    assert missing == []
    assert not [n for n in wheel_names if n.startswith("example/")]


def test_wheel_holds_the_browser_helpers(wheel_names: list[str]) -> None:
    assert "signalbus/static/signalbus/signalbus.js" in wheel_names
    assert "signalbus/templatetags/signalbus.py" in wheel_names


def test_wheel_declares_the_broker_entry_points_and_the_console_script(
    wheel: Path, wheel_names: list[str]
) -> None:
    parser = configparser.ConfigParser()
    parser.read_string(dist_info_file(wheel, wheel_names, "entry_points.txt"))
    assert parser["signalbus.brokers"]["memory"] == "brokers.memory:MemoryBroker"
    assert parser["signalbus.brokers"]["zmq"] == "brokers.zeromq:ZeroMQBroker"
    assert parser["console_scripts"]["signalbus"] == "signalbus.cli:main"


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return target


def test_brokers_and_bridges_belong_to_signalbus_alone(installed: Path, tmp_path: Path) -> None:
    # Run from an empty folder so that only the installed copy can be found first.
    out = run_python(
        f"import sys; sys.path.insert(0, {str(installed)!r})\n"
        "import importlib.metadata, json\n"
        "owners = importlib.metadata.packages_distributions()\n"
        "print(json.dumps({name: owners.get(name) for name in "
        f"{list(PACKAGES)!r}}}))\n",
        cwd=tmp_path,
    )
    # An editable install of the same distribution may list it a second time.
    owners = {name: sorted(set(dists or ())) for name, dists in json.loads(out).items()}
    assert owners == {
        "signalbus": ["signalbus"],
        "brokers": ["signalbus"],
        "bridges": ["signalbus"],
    }


def test_installed_wheel_imports_and_finds_its_brokers(installed: Path, tmp_path: Path) -> None:
    out = run_python(
        f"import sys; sys.path.insert(0, {str(installed)!r})\n"
        "import brokers, signalbus\n"
        "from brokers.registry import open_broker\n"
        "print(brokers.__file__); print(signalbus.__file__)\n"
        "print(type(open_broker('memory://')).__name__)\n",
        cwd=tmp_path,
    )
    brokers_file, signalbus_file, broker = out.split()
    assert Path(brokers_file).is_relative_to(installed)
    assert Path(signalbus_file).is_relative_to(installed)
    assert broker == "MemoryBroker"


# -- the source tree ----------------------------------------------------------------------


def test_every_test_folder_with_python_files_is_a_package() -> None:
    folders = {
        path.parent for path in (ROOT / "tests").rglob("*.py") if "__pycache__" not in path.parts
    }
    missing = sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").is_file())
    assert missing == []


def test_tests_brokers_does_not_shadow_the_real_brokers() -> None:
    import brokers

    assert Path(brokers.__file__).parent == ROOT / "brokers"
    assert importlib.import_module("tests.brokers").__name__ == "tests.brokers"


# -- public names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "signalbus",
        "signalbus.errors",
        "signalbus.topics",
        "signalbus.codec",
        "signalbus.events",
        "signalbus.conf",
        "signalbus.hub",
        "signalbus.subscribers",
        "brokers.base",
        "brokers.registry",
        "brokers.memory",
        "brokers.zeromq",
        "brokers.zeromq_forwarder",
        "signalbus.supervisor",
    ],
)
def test_every_name_in_all_exists(module: str) -> None:
    imported = importlib.import_module(module)
    names = imported.__all__
    assert len(set(names)) == len(names)
    missing = [name for name in names if not hasattr(imported, name)]
    assert missing == []


def test_facade_exports_the_contract_api() -> None:
    import signalbus

    for name in ("publish", "bind_model", "bind_signal", "Event", "InvalidTopic", "SignalbusError"):
        assert name in signalbus.__all__
        assert callable(getattr(signalbus, name))


def test_facade_raises_attribute_error_for_unknown_names() -> None:
    import signalbus

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        signalbus.nope  # noqa: B018


def test_facade_version_matches_the_distribution() -> None:
    import importlib.metadata

    import signalbus

    assert signalbus.__version__ == importlib.metadata.version("signalbus")


def test_packages_are_listed_explicitly_in_pyproject() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == list(PACKAGES)
    test_extra = config["project"]["optional-dependencies"]["test"]
    assert any(req.startswith("hatchling") for req in test_extra)


def test_every_setting_has_its_row_in_the_readme_with_its_default() -> None:
    from signalbus.conf import _KNOWN, Settings

    readme = (ROOT / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[2].strip(" `\"")
        for line in readme.splitlines()
        if line.startswith("| `") and line.count("|") >= 4
    }
    assert rows.keys() >= _KNOWN, sorted(_KNOWN - rows.keys())
    defaults = Settings()
    for key in ("REPLAY_BUFFER", "CLIENT_QUEUE", "MAX_TOPICS", "MAX_CONNECTIONS",
                "MAX_CONNECTIONS_PER_USER", "MAX_CONNECTIONS_PER_ADDRESS", "MAX_HEADER_BYTES",
                "MAX_MESSAGE_BYTES", "RETRY_MS"):
        assert int(rows[key]) == getattr(defaults, key.lower()), key
