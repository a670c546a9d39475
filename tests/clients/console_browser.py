"""Drive the web console in a real headless Chromium (Selenium): the dataset
list, a dataset page with its charts, a run's Data Docs with a failed
expectation, the lineage graph. Saves a screenshot of each page.

usage: console_browser.py BASE_URL RUN_ID SCREENSHOT_DIR
"""
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

base, run_id, shots = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(shots, exist_ok=True)

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1024,900"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


def visit(path, name):
    driver.get(base + path)
    driver.save_screenshot(os.path.join(shots, name + ".png"))
    # Usable at 1024 px: nothing wider than the window.
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check(width <= 1024, f"{path} is {width}px wide at a 1024px window")


try:
    visit("/", "datasets")
    links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table a")]
    check("ledger" in links, f"the dataset list links ledger: {links}")
    driver.find_element(By.LINK_TEXT, "ledger").click()
    check(driver.title.startswith("Dataset ledger"), f"clicking ledger opens its page: {driver.title}")
    driver.save_screenshot(os.path.join(shots, "dataset.png"))
    bars = driver.find_elements(By.CSS_SELECTOR, "svg#row-count-history rect")
    check(len(bars) >= 1, "the row-count history chart has bars")
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg#pass-rate-trend rect")) >= 1, "the pass-rate trend has bars")
    check("not_null" in driver.find_element(By.TAG_NAME, "pre").text, "the spec is shown")

    visit(f"/runs/{run_id}", "data-docs")
    docs = driver.find_elements(By.CSS_SELECTOR, "table.data-docs tr")
    check(len(docs) >= 3, f"Data Docs list the run's expectations: {len(docs)} rows")
    failed = driver.find_elements(By.CSS_SELECTOR, "table.data-docs td.false")
    check(len(failed) == 1, f"one failed expectation is marked: {len(failed)}")
    text = driver.find_element(By.TAG_NAME, "main").text
    check("1 of 2 expectations passed" in text, "the summary counts passes")

    visit("/lineage?table=silver.ledger", "lineage")
    nodes = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph g.node text")]
    check({"bronze.ledger", "silver.ledger", "gold.ledger_totals"} <= set(nodes), f"the graph shows the tables: {nodes}")
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph line.edge")) >= 2, "the graph has edges")
    # Laid out left to right: bronze before silver before gold.
    xs = {t.text: t.location["x"] for t in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph g.node text")}
    check(xs.get("bronze.ledger", 0) < xs.get("silver.ledger", 0) < xs.get("gold.ledger_totals", 0), f"layers left to right: {xs}")

    # Text from the data is escaped, never markup.
    check(not driver.find_elements(By.CSS_SELECTOR, "main b.injected"), "data is escaped")
finally:
    driver.quit()

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("console ok")
