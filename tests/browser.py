"""Headless Debian chromium driven by Selenium, for the viewer's tests, screenshots and benchmark."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def missing(reason: str):
    """Skip, or fail under CI=true (a missing browser must not pass silently there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def ensure_chromium() -> None:
    """Install Debian's chromium and chromium-driver when they are missing (needs root and apt)."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    apt = shutil.which("apt-get")
    if apt is None:
        missing("chromium is not installed and apt-get is not available")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["update"], ["install", "-y", "chromium", "chromium-driver"]):
        r = subprocess.run(sudo + [apt, *cmd], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            missing(f"apt-get {' '.join(cmd)} failed: {r.stderr.strip()[-300:]}")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        missing("apt-get installed chromium but chromium or chromedriver is still not on PATH")


def driver(width: int = 1400, height: int = 900):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install 'synthgen[dev]')")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or DRIVER), options=opts)
