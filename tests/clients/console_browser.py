"""Drive the web console in a real headless Chromium (Selenium): log in,
upload an Excel file, see its preview with the failing expectation marked,
run, read the run's Data Docs, look at a dataset's charts, open the Data Docs
of a validate() call from it, and the lineage graph of tables, then of
columns. Saves a screenshot of each page.

usage: console_browser.py BASE_URL USER PASSWORD XLSX_PATH SCREENSHOT_DIR
"""
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, user, password, xlsx, shots = sys.argv[1:6]
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


def wait_for_title(prefix, what):
    """Wait for the page a click or a submit opens (up to 20 s on a busy machine)."""
    try:
        WebDriverWait(driver, 20).until(lambda d: d.title.startswith(prefix))
    except Exception:
        failures.append(f"{what}: the page is '{driver.title}' at {driver.current_url}: {driver.page_source[:500]}")
        return False
    return True


def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))
    # Usable at 1024 px: nothing wider than the window.
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check(width <= 1024, f"{driver.current_url} is {width}px wide at a 1024px window")


try:
    # Not logged in: the login page. A wrong password is refused.
    driver.get(base + "/")
    check(driver.current_url.endswith("/login"), f"redirected to log in: {driver.current_url}")
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys("wrong")
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    try:
        WebDriverWait(driver, 20).until(lambda d: "Wrong user or password" in d.page_source)
    except Exception:
        failures.append("a wrong password is refused")
    driver.get(base + "/login")
    shot("login")
    driver.find_element(By.NAME, "user").send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()
    wait_for_title("Datasets", "logged in, the dataset list")
    shot("datasets")
    links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "table a")]
    check("personas" in links and "ledger" in links, f"the dataset list links both datasets: {links}")

    # Upload an Excel file from the dataset page → its preview.
    driver.find_element(By.LINK_TEXT, "personas").click()
    wait_for_title("Dataset personas", "the dataset page")
    driver.find_element(By.ID, "file").send_keys(xlsx)
    driver.find_element(By.ID, "upload").click()
    if not wait_for_title("Preview of personas", "the upload shows its preview"):
        raise SystemExit("\n".join(failures))
    shot("preview")
    failing = driver.find_elements(By.CSS_SELECTOR, "table.preview tr.failing")
    check(len(failing) == 1 and "Bruno" in (failing[0].text if failing else ""), f"the row failing not_null(Saldo) is marked: {[f.text for f in failing]}")
    check("1 of 3 rows fail an expectation" in driver.page_source, "the preview counts failing rows")

    # Run → the run's page with its Data Docs.
    driver.find_element(By.ID, "run").click()
    if not wait_for_title("Run ", "running opens the run"):
        raise SystemExit("\n".join(failures))
    shot("data-docs")
    docs = driver.find_elements(By.CSS_SELECTOR, "table.data-docs tr")
    check(len(docs) >= 2, f"Data Docs list the run's expectations: {len(docs)} rows")
    failed = driver.find_elements(By.CSS_SELECTOR, "table.data-docs td.false")
    check(len(failed) == 1, f"the failed expectation is marked: {len(failed)}")
    check("succeeded" in driver.find_element(By.TAG_NAME, "main").text, "the run succeeded (warn expectations)")

    # A dataset page with its charts; the lineage graph.
    driver.get(base + "/datasets/ledger")
    shot("dataset")
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg#row-count-history rect")) >= 1, "the row-count history chart has bars")
    check(len(driver.find_elements(By.CSS_SELECTOR, "svg#pass-rate-trend rect")) >= 1, "the pass-rate trend has bars")
    # The validate() call the test made: its Data Docs from the dataset page.
    reports = driver.find_elements(By.CSS_SELECTOR, "table#validations a")
    check(len(reports) == 1, f"the dataset page lists the validate() call: {len(reports)}")
    if reports:
        reports[0].click()
        if wait_for_title("Validation of silver.ledger", "the validate() call's Data Docs"):
            shot("validation")
            check("called by loader" in driver.page_source, "the report says who validated")
            failed = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "table.data-docs tr") if r.find_elements(By.CSS_SELECTOR, "td.false")]
            check(len(failed) == 1 and "amount" in failed[0], f"not_null(amount) failed, with its sample: {failed}")
    driver.get(base + "/lineage?table=silver.ledger")
    shot("lineage")
    nodes = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph g.node a text")]
    check({"bronze.ledger", "silver.ledger", "gold.ledger_totals"} <= set(nodes), f"the graph shows the tables: {nodes}")
    xs = {t.text: t.location["x"] for t in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph g.node a text")}
    check(xs.get("bronze.ledger", 0) < xs.get("silver.ledger", 0) < xs.get("gold.ledger_totals", 0), f"layers left to right: {xs}")
    # On demand, the columns and their edges.
    driver.find_element(By.ID, "toggle-columns").click()
    try:
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg#lineage-graph text.column"))
    except Exception:
        failures.append(f"the column graph shows columns: {driver.page_source[:800]}")
    shot("lineage-columns")
    columns = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph text.column")]
    check(columns.count("amount") >= 2, f"amount in bronze and silver: {columns}")
    edges = [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "svg#lineage-graph line.edge title")]
    check(any("bronze.ledger.amount → silver.ledger.amount" in e for e in edges), f"the column edge bronze→silver amount: {edges}")
    # Text from the data is escaped, never markup.
    driver.get(base + "/")
    check(not driver.find_elements(By.CSS_SELECTOR, "main b.injected"), "data is escaped")
finally:
    driver.quit()

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("console ok")
