"""Playwright in Debian's Chromium against Django's live server.

The browser is /usr/bin/chromium (or $BREAKWATER_CHROMIUM); Playwright's own downloads are not
used. Without a browser the journeys skip, unless BREAKWATER_REQUIRE_BROWSER=1 (CI), where a
missing browser is a failure. Screenshots of the main pages go to $BREAKWATER_SCREENSHOTS, or a
temporary folder printed at the end of the run.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

# Sync Playwright runs an event loop in the test thread; the ORM calls the tests make to set up
# data are safe there (the live server runs in its own thread).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
# A loaded CI machine can take a few seconds for an htmx round trip with a dry run in it.
expect.set_options(timeout=15_000)


def chromium_path():
    for candidate in (os.environ.get("BREAKWATER_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args, tmp_path_factory):
    path = chromium_path()
    if path is None:
        message = "Chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("BREAKWATER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{message}; BREAKWATER_REQUIRE_BROWSER=1 requires the browser journeys to run")
        pytest.skip(message)
    home = tmp_path_factory.mktemp("browser-home")
    return {
        **browser_type_launch_args,
        "executable_path": path,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        "env": {**os.environ, "HOME": str(home)},
    }


@pytest.fixture(scope="session")
def base_url():
    """The journeys open the live server's URLs whole: there is no base URL. Defined here because
    pytest-playwright's stand-in for pytest-base-url defines this fixture as a method of a plugin
    object, which pytest 9 deprecates with a warning in every journey."""
    return None


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1366, "height": 900}}


_SHOTS = {}


@pytest.fixture(scope="session")
def screenshot_dir():
    folder = os.environ.get("BREAKWATER_SCREENSHOTS") or tempfile.mkdtemp(prefix="breakwater-screens-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    _SHOTS["dir"] = folder
    return Path(folder)


@pytest.fixture
def shot(screenshot_dir):
    """shot(page, "name") saves a screenshot of what the user sees now (the whole page by default)."""

    def take(page, name, full_page=True):
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(screenshot_dir / f"{name}.png"), full_page=full_page)

    return take


def pytest_terminal_summary(terminalreporter):
    if "dir" in _SHOTS:
        terminalreporter.write_line(f"e2e screenshots: {_SHOTS['dir']}")
