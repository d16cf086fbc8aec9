#!/usr/bin/env bash
# The test command: lint, type-check, the whole test suite, then the unit tests again on Python 3.10.
#
# It makes its own virtualenv, never the README's .venv: that one may come from a per-user interpreter
# (pyenv under /root, mode 0700) that the unprivileged user of the permission tests cannot execute.
#
#   TEST_VENV=path      the virtualenv (default .venv-test)
#   TEST_PYTHON=path    the interpreter to make it from (default: python3 on PATH if an unprivileged user can
#                       run it, else /usr/bin/python3 or /usr/local/bin/python3)
#   TEST_INSTALL=wheel  install a built copy instead of an editable one (CI does, so that an unprivileged test
#                       user can import it wherever the checkout lives)
#   TEST_PY310=path     the Python 3.10 of the second run (default: python3.10 on PATH, else pyenv's 3.10)
#   TEST_SETUP_ONLY=1   make the virtualenvs and stop; =venv: only choose the interpreter and make the main
#                       virtualenv, install nothing (tests/test_test_script.py)
# Extra arguments go to the main pytest run, e.g. scripts/test.sh -k rapl
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TEST_VENV:-.venv-test}
py310_venv=build/venv-py3.10
pip_install() { "$1/bin/python" -m pip install -q --disable-pip-version-check "${@:2}"; }
fail() { echo "scripts/test.sh: $*" >&2; exit 2; }

# Whether the unprivileged test user could execute this interpreter (as root; otherwise no test switches
# user, and any interpreter will do).
runnable_by_others() {
    [ "$(id -u)" -ne 0 ] && return 0
    runuser -u nobody -- "$1" -c 'import encodings' >/dev/null 2>&1
}
is_python() {  # is_python PATH MIN_MINOR [MAX_MINOR]
    [ -n "$1" ] && "$1" -c "import sys; sys.exit(not ((3, $2) <= sys.version_info[:2] <= (3, ${3:-99})))" \
        >/dev/null 2>&1
}

pick_python() {
    local candidates=("${TEST_PYTHON:-}")
    [ -n "${TEST_PYTHON:-}" ] || candidates=("$(command -v python3 || true)" /usr/bin/python3 /usr/local/bin/python3)
    for candidate in "${candidates[@]}"; do
        if is_python "$candidate" 10 && runnable_by_others "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ -x "$venv/bin/python" ] && ! { is_python "$venv/bin/python" 10 && runnable_by_others "$(realpath "$venv/bin/python")"; }; then
    echo "scripts/test.sh: remaking $venv: an unprivileged user cannot run its interpreter" >&2
    rm -rf "$venv"
fi
reachable() {  # reachable DIR: could the unprivileged test user get to it?
    [ "$(id -u)" -ne 0 ] || runuser -u nobody -- test -x "$1" 2>/dev/null
}
unreachable="an unprivileged user cannot reach $venv (a directory above it is not searchable by others, e.g. \
mode 0700). Fix: clone into a directory others can traverse, such as /opt or /srv"
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    reachable "$(cd "$(dirname "$venv")" && pwd)" || fail "$unreachable"
    python=$(pick_python) || fail "no Python >= 3.10 that an unprivileged user can run (${TEST_PYTHON:-python3 on \
PATH, /usr/bin/python3}; pyenv's lives under /root, mode 0700). Fix: apt-get install python3-venv, or set \
TEST_PYTHON to such an interpreter"
    "$python" -m venv "$venv" || fail "$python -m venv failed. Fix: apt-get install python3-venv (Debian, Ubuntu)"
fi
runnable_by_others "$(cd "$venv" && pwd)/bin/python" || fail "$unreachable"
[ "${TEST_SETUP_ONLY:-}" != venv ] || exit 0
if [ "${TEST_INSTALL:-editable}" = wheel ]; then
    pip_install "$venv" '.[dev]'
else
    pip_install "$venv" -e '.[dev]'
fi

# The second run: Python 3.10, the oldest supported, on the unit tests and in-process servers that need no
# unprivileged user, container engine or systemd (tests/test_shutdown.py runs the daemon on every version).
py310=""
for candidate in "${TEST_PY310:-}" "$(command -v python3.10 || true)" /usr/bin/python3.10 \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10; do
    if is_python "$candidate" 10 10; then py310=$candidate; break; fi
done
if [ -n "$py310" ]; then
    stamp="$py310 $(sha256sum pyproject.toml | cut -c1-16)"
    if [ "$(cat "$py310_venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$py310_venv"
        "$py310" -m venv "$py310_venv"
        pip_install "$py310_venv" -e '.[test]'
        echo "$stamp" > "$py310_venv/.stamp"
    fi
elif [ -n "${CI:-}" ]; then
    fail "CI must run the unit tests on Python 3.10, and there is none. Fix: install python3.10 (pyenv install 3.10) \
or set TEST_PY310"
fi
[ -z "${TEST_SETUP_ONLY:-}" ] || exit 0

echo "== ruff"; "$venv/bin/ruff" check exporter tests benchmarks
"$venv/bin/ruff" format --check exporter
echo "== mypy --strict"; "$venv/bin/mypy" exporter
pytest_run() {
    set +e
    "$@"
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "pytest collected no tests: that is a broken suite, not a pass" >&2
        return 1
    fi
    return "$rc"
}
echo "== pytest"
status=0
pytest_run "$venv/bin/pytest" -q "$@" || status=$?
if [ -n "$py310" ]; then  # also after a failure above: both results are worth having
    echo "== pytest on $("$py310_venv/bin/python" -V) (unit tests)"
    pytest_run "$py310_venv/bin/pytest" -q -p no:cacheprovider -m "not slow" \
        tests/test_config.py tests/test_cli.py tests/test_counters.py tests/test_attribution.py \
        tests/test_engine.py tests/test_model.py tests/test_rapl.py tests/test_node_fixtures.py \
        tests/test_once_json.py tests/test_pod_watch.py tests/test_webconfig.py tests/test_server.py \
        tests/test_accounting.py tests/test_zones.py tests/test_meter_select.py tests/test_redfish.py \
        tests/test_carbon.py tests/test_carbon_intensity.py tests/test_runtime.py || status=$?
else
    echo "== no Python 3.10 here: the unit tests ran on $("$venv/bin/python" -V) only"
fi
exit "$status"
