#!/usr/bin/env bash
# The test command: install what the tests need into .venv (idempotent) and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash z_task_shell/setup_env.sh --test
# Fashion-MNIST tests use the Debian package when it can be installed; they skip with a reason otherwise.
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
    || echo "warning: could not install dataset-fashion-mnist; its tests will be skipped"
fi
# The browser test of the serving page drives Debian's chromium through its chromedriver (nothing downloads a
# browser); it skips with a reason where they cannot be installed.
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium and chromium-driver; the browser test of the page will be skipped"
fi
status=0
.venv/bin/python -m pytest tests -q -ra "$@" || status=$?
if [ "$status" = 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
