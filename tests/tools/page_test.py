#!/usr/bin/env python3
"""Drives Tessera's `GET /` page in a real headless Chromium (Debian's chromium and
chromium-driver, through Selenium) as a user would: choose an image file, read the answer.

    page_test.py --url http://127.0.0.1:PORT/ --image good.png --label circle --bad bad.png \
        [--scene scene.png --task detect --boxes 3 --screenshot page.png]

Checks, printing one JSON line of what it saw: the model list is loaded; choosing --image shows
--label with a confidence, a decision, top-k bars and one timing bar per stage plus the total;
choosing --bad shows the server's error code; the page loaded nothing from another origin and
logged no error to the console. With --scene, it then runs --task on it and checks that the
page draws --boxes boxes over the image and lists as many detections (and saves a screenshot). Exits non-zero naming the first check that failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1200,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def fail(message: str) -> None:
    print(f"page test failed: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--image", required=True, help="an image the default model should label --label")
    ap.add_argument("--label", required=True)
    ap.add_argument("--bad", required=True, help="a file that is no image")
    ap.add_argument("--scene", help="an image for --task")
    ap.add_argument("--task", default="detect")
    ap.add_argument("--boxes", type=int, help="how many detections the API answers for --scene")
    ap.add_argument("--screenshot", help="where to save the page after --scene")
    args = ap.parse_args()

    driver = browser()
    seen: dict = {}
    try:
        driver.get(args.url)
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
        seen["models"] = [o.text for o in Select(driver.find_element(By.ID, "model")).options]
        seen["header"] = driver.find_element(By.ID, "server").text

        # The file input is hidden behind the drop zone; Selenium sets its file directly, as a
        # user's choice in the file dialog does.
        driver.find_element(By.ID, "file").send_keys(args.image)
        wait.until(ec.visibility_of_element_located((By.ID, "result")))
        seen["label"] = driver.find_element(By.ID, "label").text
        seen["confidence"] = driver.find_element(By.ID, "confidence").text
        seen["decision"] = driver.find_element(By.ID, "decision").text
        seen["predictions"] = len(driver.find_elements(By.CSS_SELECTOR, "#predictions .bar"))
        seen["timings"] = {
            row.get_attribute("data-name"): float(row.find_element(By.CLASS_NAME, "value").text)
            for row in driver.find_elements(By.CSS_SELECTOR, "#timings .bar")
        }
        seen["meta"] = driver.find_element(By.ID, "meta").text
        if seen["label"] != args.label:
            fail(f"the page shows {seen['label']!r}, expected {args.label!r}: {seen}")
        if not seen["confidence"].startswith("confidence "):
            fail(f"no confidence: {seen}")
        if not (seen["decision"].startswith("Accepted") or seen["decision"].startswith("Rejected")):
            fail(f"no decision: {seen}")
        if seen["predictions"] != 5:
            fail(f"expected 5 top-k bars (the default top_k): {seen}")
        if sorted(seen["timings"]) != ["inference", "postprocess", "preprocess", "rules", "total"]:
            fail(f"expected a timing bar per stage and the total: {seen}")
        if not seen["timings"]["total"] > 0:
            fail(f"a zero total time: {seen}")

        driver.find_element(By.ID, "file").send_keys(args.bad)
        wait.until(ec.visibility_of_element_located((By.ID, "error")))
        seen["error"] = driver.find_element(By.ID, "error").text
        if "invalid_image" not in seen["error"] or not seen["error"].startswith("400"):
            fail(f"expected the server's 400 invalid_image on the page: {seen}")
        if driver.find_element(By.ID, "result").is_displayed():
            fail("the previous answer is still shown beside the error")

        if args.scene:
            run = Select(driver.find_element(By.ID, "run"))
            seen["runs"] = [o.get_attribute("value") for o in run.options]
            if args.task not in seen["runs"]:
                fail(f"no {args.task!r} in the page's task list: {seen}")
            run.select_by_value(args.task)
            driver.find_element(By.ID, "file").send_keys(args.scene)
            wait.until(ec.visibility_of_element_located((By.ID, "task-result")))
            wait.until(lambda d: d.find_element(By.ID, "boxes").get_attribute("data-boxes") is not None)
            canvas = driver.find_element(By.ID, "boxes")
            seen["task_title"] = driver.find_element(By.ID, "task-title").text
            seen["boxes_drawn"] = int(canvas.get_attribute("data-boxes"))
            seen["detections_listed"] = len(driver.find_elements(By.CSS_SELECTOR, "#answer .bar"))
            seen["canvas"] = [int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))]
            seen["task_timings"] = sorted(row.get_attribute("data-name")
                                          for row in driver.find_elements(By.CSS_SELECTOR, "#task-timings .bar"))
            if args.screenshot:
                driver.save_screenshot(args.screenshot)
            if not canvas.is_displayed() or seen["boxes_drawn"] != args.boxes or seen["detections_listed"] != args.boxes:
                fail(f"expected {args.boxes} boxes drawn and listed: {seen}")
            if "total" not in seen["task_timings"]:
                fail(f"no total timing for the task: {seen}")

        origin = urlparse(args.url).netloc
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        foreign = [r for r in resources if urlparse(r).scheme in ("http", "https") and urlparse(r).netloc != origin]
        seen["requests"] = len(resources)
        if foreign:
            fail(f"the page loaded from other origins: {foreign}")
        # The 400 answer itself is logged by Chromium as a failed resource; anything else is ours.
        errors = [e for e in driver.get_log("browser")
                  if e["level"] == "SEVERE" and "the server responded with a status of 400" not in e["message"]]
        if errors:
            fail(f"console errors: {errors}")
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
