#!/usr/bin/env bash
# The test command: lint, type-check, then the whole test suite. Creates the virtualenv on first use.
#
#   TEST_VENV=path   where the virtualenv lives (default .venv)
#   TEST_INSTALL=wheel  install a built copy instead of an editable one (CI does, so that an
#                        unprivileged test user can import it wherever the checkout lives)
# Extra arguments go to pytest, e.g. scripts/test.sh -k rapl
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TEST_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
    # Debian's interpreter, not a per-user one: non-root test users must be able to execute it.
    /usr/bin/python3 -m venv "$venv"
fi
if [ "${TEST_INSTALL:-editable}" = wheel ]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check '.[dev]'
else
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
fi
echo "== ruff"; "$venv/bin/ruff" check exporter tests benchmarks
"$venv/bin/ruff" format --check exporter
echo "== mypy --strict"; "$venv/bin/mypy" exporter
echo "== pytest"
set +e
"$venv/bin/pytest" -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a broken suite, not a pass" >&2
    exit 1
fi
exit "$rc"
