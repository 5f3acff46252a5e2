pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    parser.addoption("--sweep-count", type=int, default=6, help="random configurations per family in tests/test_sweep.py (default 6)")
    parser.addoption("--sweep-seed", type=int, default=0, help="seed of the agreement sweep (default 0)")
    parser.addoption(
        "--hostile-count", type=int, default=300, help="malformed case files generated in tests/test_hostile_cases.py (default 300)"
    )
    parser.addoption("--hostile-seed", type=int, default=0, help="seed of the malformed corpus (default 0)")


def pytest_generate_tests(metafunc):
    if "sweep_index" in metafunc.fixturenames:
        metafunc.parametrize("sweep_index", range(metafunc.config.getoption("sweep_count")))
